//! Queries: the server asking an owner to move a container to their machine.
//!
//! One service keeps them: it stores a query, sends it to the owner's agent, takes the
//! owner's answer, and closes it when the monitor withdraws or expires it. The store is
//! the one record of a query; the monitor's policy learns of queries it did not ask
//! itself (the operator's, those left from before a restart) and of answers by reading
//! the store each round. One expiry rule: a query expires at the deadline it was stored
//! with, by the server's clock; the policy expires it then, and an answer after it is
//! refused.

use std::sync::Arc;
use std::time::Duration;

use offload_core::agent::ServerMessage;
use offload_core::api::QueryView;
use offload_core::events::EventBody;
use offload_core::{ContainerId, ContainerRecord};
use offload_monitor::Answer;
use offload_store::{Principal, QueryRecord, Store};

use crate::clock::Clock;
use crate::db;
use crate::error::ActionError;
use crate::events::EventLog;
use crate::hub::AgentHub;
use crate::metrics::Metrics;

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    Accepted,
    Declined,
    Expired,
    /// The pressure it was asked for is over.
    Withdrawn,
}

impl Closing {
    pub fn as_str(self) -> &'static str {
        match self {
            Closing::Accepted => "accepted",
            Closing::Declined => "declined",
            Closing::Expired => "expired",
            Closing::Withdrawn => "withdrawn",
        }
    }

    /// The owner's answer a stored state records, if it is one.
    pub fn answer_of(state: &str) -> Option<Answer> {
        match state {
            "accepted" => Some(Answer::Accept),
            "declined" => Some(Answer::Decline),
            _ => None,
        }
    }
}

pub struct Queries {
    store: Arc<Store>,
    hub: Arc<AgentHub>,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// How long an owner has to answer.
    deadline: Duration,
}

pub fn view(q: &QueryRecord, name: &str) -> QueryView {
    QueryView {
        id: q.id.clone(),
        container_id: q.container_id.to_string(),
        container_name: name.to_owned(),
        owner: q.owner.to_string(),
        reason: q.reason.clone(),
        created_at: q.created_at,
        deadline_at: q.deadline_at,
        state: q.state.clone(),
        answered_at: q.answered_at,
        move_bytes: q.move_bytes,
        to_node: q.to_node.clone(),
        device: q.device.clone(),
    }
}

impl Queries {
    pub fn new(
        store: Arc<Store>,
        hub: Arc<AgentHub>,
        events: Arc<EventLog>,
        metrics: Arc<Metrics>,
        clock: Clock,
        deadline: Duration,
    ) -> Self {
        Queries {
            store,
            events,
            hub,
            metrics,
            clock,
            deadline,
        }
    }

    /// How long an owner has to answer.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Records a query about `record` and sends it to the agent of the owner's `device`:
    /// a move to that device, or with `to_node`, to that node of the cluster.
    pub async fn ask(
        &self,
        record: &ContainerRecord,
        reason: &str,
        move_bytes: u64,
        to_node: Option<&str>,
        device: Option<&str>,
    ) -> Result<QueryRecord, ActionError> {
        let at = self.clock.unix();
        let query = QueryRecord {
            id: format!("q{}", &crate::auth::random_secret()[..10]),
            container_id: record.id.clone(),
            owner: record.owner.clone(),
            reason: reason.to_owned(),
            created_at: at,
            deadline_at: at + self.deadline.as_secs().max(1) as i64,
            state: "pending".to_owned(),
            answered_at: None,
            move_bytes,
            to_node: to_node.map(str::to_owned),
            device: device.map(str::to_owned),
        };
        let stored = query.clone();
        let detail = match to_node {
            Some(_) => format!("asked to move to another node: {reason}"),
            None => format!("asked to move: {reason}"),
        };
        db::call(&self.store, move |s| {
            s.insert_query(&stored)?;
            s.record_event(&stored.container_id, at, "query", &detail)
        })
        .await?;
        self.metrics.query("asked");
        self.events
            .publish(
                Some(&query.owner),
                EventBody::QueryAsked {
                    query_id: query.id.clone(),
                    container_id: query.container_id.clone(),
                    name: record.name.clone(),
                    reason: query.reason.clone(),
                    deadline_at: query.deadline_at,
                },
            )
            .await;
        tracing::info!(id = %record.id, query = %query.id, %reason, "asking the owner to move");
        if let Some(agent) = self.hub.agent(&record.owner, device) {
            agent.send(ServerMessage::Query {
                query: view(&query, record.name.as_str()),
                deadline_secs: self.deadline.as_secs(),
            });
        }
        Ok(query)
    }

    /// Every query still waiting for an answer.
    pub async fn pending(&self) -> Result<Vec<QueryRecord>, ActionError> {
        db::call(&self.store, |s| s.pending_queries()).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<QueryRecord>, ActionError> {
        let key = id.to_owned();
        db::call(&self.store, move |s| s.query(&key)).await
    }

    /// Closes a pending query; `false` if it was closed already. The owner's agent
    /// stops asking.
    pub async fn close(&self, query: &QueryRecord, how: Closing) -> bool {
        let id = query.id.clone();
        let at = self.clock.unix();
        let closed = db::call(&self.store, move |s| s.close_query(&id, how.as_str(), at))
            .await
            .unwrap_or(false);
        if closed {
            self.metrics.query(how.as_str());
            self.events
                .publish(
                    Some(&query.owner),
                    EventBody::QueryClosed {
                        query_id: query.id.clone(),
                        container_id: query.container_id.clone(),
                        state: how.as_str().to_owned(),
                    },
                )
                .await;
            if let Some(agent) = self.hub.agent(&query.owner, query.device.as_deref()) {
                agent.send(ServerMessage::QueryClosed {
                    id: query.id.clone(),
                    state: how.as_str().to_owned(),
                });
            }
        }
        closed
    }

    /// Closes every pending query about `container_id` as `how`, returning those it
    /// closed.
    pub async fn close_about(&self, container_id: &ContainerId, how: Closing) -> Vec<QueryRecord> {
        let Ok(pending) = self.pending().await else {
            return Vec::new();
        };
        let mut closed = Vec::new();
        for q in pending
            .into_iter()
            .filter(|q| q.container_id == *container_id)
        {
            if self.close(&q, how).await {
                closed.push(q);
            }
        }
        closed
    }

    /// The owner answers a query: refused when it is not theirs (as if missing), no
    /// longer pending, or past its deadline. Returns the closed query.
    pub async fn answer(
        &self,
        who: &Principal,
        query_id: &str,
        answer: Answer,
    ) -> Result<QueryRecord, ActionError> {
        let query = self
            .get(query_id)
            .await?
            .filter(|q| q.owner == who.user)
            .ok_or_else(|| ActionError::NotFound(format!("query {query_id}")))?;
        if query.state != "pending" {
            return Err(ActionError::Conflict(format!(
                "query {query_id} is already {}; it can no longer be answered",
                query.state
            )));
        }
        if query.deadline_at <= self.clock.unix() {
            // The monitor's next round applies the default action.
            return Err(ActionError::Conflict(format!(
                "query {query_id} expired before the answer came"
            )));
        }
        let how = match answer {
            Answer::Accept => Closing::Accepted,
            Answer::Decline => Closing::Declined,
        };
        if !self.close(&query, how).await {
            return Err(ActionError::Conflict(format!(
                "query {query_id} was answered already"
            )));
        }
        self.get(query_id)
            .await?
            .ok_or_else(|| ActionError::NotFound(format!("query {query_id}")))
    }

    /// `who`'s queries, newest first, named after their containers in `records`.
    pub async fn of(
        &self,
        who: &Principal,
        records: &[ContainerRecord],
    ) -> Result<Vec<QueryView>, ActionError> {
        let owner = who.user.clone();
        let queries = db::call(&self.store, move |s| s.queries_of(&owner)).await?;
        Ok(queries
            .iter()
            .map(|q| {
                let name = records
                    .iter()
                    .find(|r| r.id == q.container_id)
                    .map_or("", |r| r.name.as_str());
                view(q, name)
            })
            .collect())
    }

    /// Whether the owner declined a query to move `record` to their machine less than
    /// `cooldown` ago.
    pub async fn declined_recently(
        &self,
        record: &ContainerRecord,
        cooldown: Duration,
    ) -> Result<bool, ActionError> {
        let owner = record.owner.clone();
        let history = db::call(&self.store, move |s| s.queries_of(&owner)).await?;
        let now = self.clock.unix();
        Ok(history.iter().any(|q| {
            q.container_id == record.id
                && q.to_node.is_none()
                && q.state == "declined"
                && q.answered_at
                    .is_some_and(|at| now - at < cooldown.as_secs() as i64)
        }))
    }
}
