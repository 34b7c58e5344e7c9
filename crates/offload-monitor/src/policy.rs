//! The pressure policy: each interval it reads the world, decides whom to ask to move to
//! the edge and whom to offer a return, and remembers what it asked.
//!
//! It is level-triggered: every decision follows from the current observation and the
//! remembered queries, so a missed tick only delays a decision, and evaluating the same
//! observation twice asks nobody twice. Time comes in as `now` (time since the server
//! started); the policy never reads a clock.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{DefaultAction, PolicyConfig};
use crate::error::ConfigError;
use crate::pressure::{Change, Pressure, Trigger, percent};
use crate::resource::{Resource, Watermark};
use crate::sample::{ContainerUsage, HostSample, finite_or_zero};
use crate::select::{Candidate, Homecoming, Room, fitting_returns, relieving_set};

/// What a cloud container would need from its owner's edge to move there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveNeeds {
    /// offload container id.
    pub id: String,
    /// Cores it needs at the edge.
    pub cpus: f64,
    /// Memory it needs at the edge, in bytes.
    pub mem_bytes: u64,
    /// Bytes the edge lacks and would receive (workspace, and the image if not cached):
    /// the cost of the move, and the free disk it needs.
    pub missing_bytes: u64,
}

/// A connected agent: what its edge has free and its owner's choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The user the agent runs for.
    pub owner: String,
    /// Cores free at the edge.
    pub cpus: f64,
    /// Memory free at the edge, in bytes.
    pub mem_bytes: u64,
    /// Disk free at the edge, in bytes.
    pub free_disk_bytes: u64,
    /// The owner accepts queries they do not answer.
    pub auto_accept: bool,
    /// The owner's containers move back by themselves when the cloud has room.
    pub auto_return: bool,
}

/// Everything the policy reads in one evaluation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Observation {
    /// The host (or pool) sample.
    pub host: HostSample,
    /// Every managed container, in the cloud and at the edge, with its current use.
    pub containers: Vec<ContainerUsage>,
    /// What each movable cloud container needs at the edge. A cloud container without an
    /// entry is never asked, as nobody can tell whether it fits.
    pub needs: Vec<MoveNeeds>,
    /// Connected agents, one per owner. A container whose owner has none is never asked
    /// and never offered a return.
    pub agents: Vec<AgentReport>,
    /// On a cluster, its nodes: the policy then watches each node and relieves a busy
    /// one by moves to others before it asks anybody to offload. Empty on one host.
    #[serde(default)]
    pub nodes: Vec<NodeReport>,
}

/// One node of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The engine's node ID (what [`ContainerUsage::node`] names).
    pub id: String,
    /// The operator's name for it, for people.
    pub name: String,
    /// Cores its load is measured against.
    pub cpus: f64,
    /// Memory bytes its load is measured against.
    pub mem_bytes: u64,
    /// Containers may be placed here now (ready, active, its engine reachable).
    pub schedulable: bool,
    /// Its containers may be moved away by the monitor (ready and reachable, and not
    /// being drained, which moves them by itself).
    pub movable_from: bool,
}

/// A move inside the cloud, from a node under pressure to the node with the most room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relocation {
    /// The container to move.
    pub container_id: String,
    /// Its owner, who is told (or asked) first.
    pub owner: String,
    /// The node it runs on.
    pub from_node: String,
    /// The node it moves to.
    pub to_node: String,
    /// The target's name, for people.
    pub to_node_name: String,
    /// Why, for the owner: the node's pressure and this container's share of it.
    pub reason: String,
}

/// A user's answer to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// Move the container to the edge.
    Accept,
    /// Keep it in the cloud.
    Decline,
}

/// Pressure on a resource started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PressureEvent {
    /// The resource.
    pub resource: Resource,
    /// What started it.
    pub trigger: Trigger,
    /// "cpu 93% for 20 s (high 85%), forecast 98% in 30 s".
    pub reason: String,
}

/// A query to send: ask `owner` to move `container_id` to their edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    /// The container to move.
    pub container_id: String,
    /// Its owner, who is asked.
    pub owner: String,
    /// Why, for the query text: the pressure and this container's share.
    pub reason: String,
    /// When the query times out (time since start); then the default action applies.
    pub deadline: Duration,
    /// Bytes the edge would receive.
    pub move_bytes: u64,
}

/// A query that reached its deadline unanswered and what it turned into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expiry {
    /// The container asked about.
    pub container_id: String,
    /// Its owner.
    pub owner: String,
    /// `accept` if the owner opted in to auto-accept or the default is accept (and their
    /// agent is still connected), else `decline`.
    pub action: DefaultAction,
}

/// A container at the edge that may come back to the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Return {
    /// The container at the edge.
    pub container_id: String,
    /// Its owner.
    pub owner: String,
    /// Why now, for the notice or the move's record.
    pub reason: String,
}

/// One resource, for display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Which resource.
    pub resource: Resource,
    /// Current fraction in use.
    pub usage: f64,
    /// Forecast fraction at the horizon.
    pub forecast: f64,
    /// Its watermarks.
    pub watermark: Watermark,
    /// Whether it is under pressure.
    pub pressure: bool,
    /// What started the current pressure.
    pub trigger: Option<Trigger>,
    /// How long usage has been above high.
    pub above_high_for: Option<Duration>,
}

/// One node of a cluster, for display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Whether containers may be placed there.
    pub schedulable: bool,
    /// Cores its load is measured against.
    pub cpus: f64,
    /// Memory bytes its load is measured against.
    pub mem_bytes: u64,
    /// Per resource, in [`Resource::ALL`] order: the node's own pressure.
    pub resources: Vec<ResourceStatus>,
    /// Whether any resource of the node is under pressure.
    pub under_pressure: bool,
    /// Under pressure, and no move inside the cloud can relieve it.
    pub stuck: bool,
}

/// A snapshot of the monitor for the dashboard, `/metrics` and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When it was taken (time since start).
    pub at: Duration,
    /// Per resource, in [`Resource::ALL`] order.
    pub resources: Vec<ResourceStatus>,
    /// Whether any resource is under pressure.
    pub under_pressure: bool,
    /// One line for people: the pressure and what the policy is doing about it.
    pub reason: String,
    /// Queries sent and not yet answered.
    pub pending_queries: usize,
    /// Accepted moves whose container still runs in the cloud.
    pub moves_in_flight: usize,
    /// How long every resource has been below its low watermark.
    pub calm_for: Option<Duration>,
    /// On a cluster, each node.
    pub nodes: Vec<NodeStatus>,
}

/// What to do after one evaluation. Everything but `status` is empty on most ticks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Resources that came under pressure in this evaluation (warn connected users).
    pub pressure_started: Vec<PressureEvent>,
    /// Resources whose pressure ended in this evaluation.
    pub pressure_ended: Vec<Resource>,
    /// Queries to send.
    pub ask: Vec<Ask>,
    /// Queries that reached their deadline unanswered, with the action to apply.
    pub expired: Vec<Expiry>,
    /// Containers whose pending query should be withdrawn: pressure ended, or the
    /// container left the cloud or disappeared.
    pub withdrawn: Vec<String>,
    /// Edge containers to move back now (their owners opted in to auto-return).
    pub return_moves: Vec<Return>,
    /// Edge containers whose owners should be told the cloud has room.
    pub return_notices: Vec<Return>,
    /// On a cluster: moves from a node under pressure to another one. Each is pending
    /// (as a query is) until [`Policy::record_relocation_answer`] says whether it
    /// started (the operator's `cloud_moves = "notify"`) or the owner accepted it.
    pub relocations: Vec<Relocation>,
    /// The monitor's state after this evaluation.
    pub status: Status,
}

#[derive(Debug, Clone)]
struct PendingQuery {
    owner: String,
    asked_at: f64,
    /// Asked outside this policy's rounds (an operator's ask): it stands until answered,
    /// expired or moot, even when pressure ends.
    standing: bool,
}

/// Relief needed below this is float noise, not a reason to ask anybody.
const RELIEF_EPSILON: f64 = 1e-9;

/// The pressure policy and its memory of queries, answers and returns.
#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    pressure: [Pressure; 2],
    last_at: Option<f64>,
    pending: BTreeMap<String, PendingQuery>,
    /// Accepted, still running in the cloud: container id -> when accepted.
    accepted: BTreeMap<String, f64>,
    /// Container id -> when it was declined (or its query expired as a decline).
    declined: BTreeMap<String, f64>,
    /// Container id -> when it was last offered a return.
    offered_return: BTreeMap<String, f64>,
    last_round_at: Option<f64>,
    calm_since: Option<f64>,
    /// On a cluster, each node's own pressure.
    nodes: BTreeMap<String, cluster::NodeTrack>,
    /// Moves between nodes proposed and not yet started or answered.
    relocation_pending: BTreeMap<String, cluster::ProposedRelocation>,
    /// Moves between nodes under way: container id -> (target node, since when).
    relocating: BTreeMap<String, (String, f64)>,
    /// Container id -> when it last moved between nodes, or its owner declined to.
    relocated: BTreeMap<String, f64>,
    /// On a cluster, per resource: what drives the cluster's pressure, for its text.
    cluster_note: [Option<String>; 2],
}

impl Policy {
    /// A policy with nothing asked yet. Fails if the configuration does not validate.
    pub fn new(config: PolicyConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            pressure: Resource::ALL.map(|r| Pressure::new(r, &config)),
            config,
            last_at: None,
            pending: BTreeMap::new(),
            accepted: BTreeMap::new(),
            declined: BTreeMap::new(),
            offered_return: BTreeMap::new(),
            last_round_at: None,
            calm_since: None,
            nodes: BTreeMap::new(),
            relocation_pending: BTreeMap::new(),
            relocating: BTreeMap::new(),
            relocated: BTreeMap::new(),
            cluster_note: [None, None],
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Whether a query about `container_id` is waiting for an answer.
    pub fn is_pending(&self, container_id: &str) -> bool {
        self.pending.contains_key(container_id)
    }

    /// Records a stored query about `container_id` asked at `now`, so its deadline is kept
    /// by the same rule. A `standing` one (an operator's, or one persisted before a
    /// restart) stays pending when pressure ends. A query already pending keeps its time,
    /// and becomes standing if this one is: an operator may ask in the same round as the
    /// policy, and then the operator's query is the one stored.
    pub fn record_ask(&mut self, container_id: &str, owner: &str, now: Duration, standing: bool) {
        let query = self
            .pending
            .entry(container_id.to_owned())
            .or_insert_with(|| PendingQuery {
                owner: owner.to_owned(),
                asked_at: now.as_secs_f64(),
                standing,
            });
        query.standing |= standing;
    }

    /// Records the owner's answer to the query about `container_id`. A decline keeps the
    /// container from being asked again for `decline_cooldown_secs`; an accept counts it
    /// as leaving until it stops running in the cloud (or `move_timeout_secs` pass).
    /// Answers for containers not asked by this policy (say, before a restart) count too.
    pub fn record_answer(&mut self, container_id: &str, answer: Answer, now: Duration) {
        let at = now.as_secs_f64();
        self.pending.remove(container_id);
        match answer {
            Answer::Accept => {
                self.accepted.insert(container_id.to_owned(), at);
            }
            Answer::Decline => {
                self.declined.insert(container_id.to_owned(), at);
            }
        }
    }

    /// Records that the owner declined to move `container_id`.
    pub fn record_decline(&mut self, container_id: &str, now: Duration) {
        self.record_answer(container_id, Answer::Decline, now);
    }

    /// Records that the owner accepted to move `container_id`.
    pub fn record_accept(&mut self, container_id: &str, now: Duration) {
        self.record_answer(container_id, Answer::Accept, now);
    }

    /// Evaluates one interval. `now` is the time since the server started; a `now` equal
    /// to (or before) the previous one re-evaluates without advancing the forecast.
    pub fn evaluate(&mut self, now: Duration, observation: &Observation) -> Decision {
        let at = now.as_secs_f64();
        let new_sample = self.last_at.is_none_or(|last| at > last);
        if new_sample {
            self.last_at = Some(at);
        }
        let host = observation.host;
        let world = World::new(observation);
        // On a cluster the cloud as a whole is under pressure only when no move inside
        // it can help: its usage is that of the least busy node, or of a busy node no
        // other node has room to relieve, whichever is higher.
        let cluster = (!observation.nodes.is_empty())
            .then(|| self.cluster_round(at, new_sample, &observation.nodes, &world));
        let usage = match &cluster {
            Some(round) => round.signal,
            None => [finite_or_zero(host.cpu), finite_or_zero(host.mem)],
        };
        if cluster.is_none() {
            self.cluster_note = [None, None];
        }

        let mut pressure_started = Vec::new();
        let mut pressure_ended = Vec::new();
        for i in 0..self.pressure.len() {
            let p = &mut self.pressure[i];
            match p.update(at, usage[p.resource().index()], new_sample) {
                Change::Started => {
                    let (resource, trigger) =
                        (p.resource(), p.trigger().unwrap_or(Trigger::Sustained));
                    pressure_started.push(PressureEvent {
                        resource,
                        trigger,
                        reason: self.describe(i, at),
                    });
                }
                Change::Ended => pressure_ended.push(p.resource()),
                Change::Unchanged => {}
            }
        }

        let mut expired = self.expire_queries(at, &world);
        let mut withdrawn = self.forget_finished(at, &world);
        let mut relocations = Vec::new();
        if let Some(round) = &cluster {
            expired.extend(round.expired.iter().cloned());
            withdrawn.extend(round.withdrawn.iter().cloned());
            relocations = round.relocations.clone();
        }
        let under_pressure = self.pressure.iter().any(Pressure::is_active);
        if !under_pressure {
            // The cloud has room again; nobody should move for nothing.
            let (standing, moot): (BTreeMap<_, _>, BTreeMap<_, _>) =
                std::mem::take(&mut self.pending)
                    .into_iter()
                    .partition(|(_, q)| q.standing);
            self.pending = standing;
            withdrawn.extend(moot.into_keys());
        }

        let (ask, ask_note) = if under_pressure {
            let groups = match &cluster {
                Some(round) => self.cluster_groups(at, round),
                None => vec![self.host_group(at, &host)],
            };
            self.ask_round(at, &world, groups)
        } else {
            (Vec::new(), None)
        };
        let (return_moves, return_notices) =
            self.offer_returns(at, &host, &world, cluster.as_ref());

        Decision {
            pressure_started,
            pressure_ended,
            ask,
            expired,
            withdrawn,
            return_moves,
            return_notices,
            relocations,
            status: self.status(
                at,
                ask_note,
                cluster.map(|round| round.status).unwrap_or_default(),
            ),
        }
    }

    /// Applies the default action to queries past their deadline. The decline or accept
    /// is dated at the deadline, not at this tick, so a late tick does not lengthen it.
    fn expire_queries(&mut self, at: f64, world: &World<'_>) -> Vec<Expiry> {
        let deadline = self.config.query_deadline_secs;
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, q)| at >= q.asked_at + deadline)
            .map(|(id, _)| id.clone())
            .collect();
        let mut expired = Vec::new();
        for id in due {
            let Some(query) = self.pending.remove(&id) else {
                continue;
            };
            let expired_at = query.asked_at + deadline;
            let action = match world.agents.get(query.owner.as_str()) {
                None => DefaultAction::Decline,
                Some(agent) if agent.auto_accept => DefaultAction::Accept,
                Some(_) => self.config.default_action,
            };
            match action {
                DefaultAction::Accept => self.accepted.insert(id.clone(), expired_at),
                DefaultAction::Decline => self.declined.insert(id.clone(), expired_at),
            };
            expired.push(Expiry {
                container_id: id,
                owner: query.owner,
                action,
            });
        }
        expired
    }

    /// Drops memory that no longer matters; returns pending queries that became moot.
    fn forget_finished(&mut self, at: f64, world: &World<'_>) -> Vec<String> {
        let in_cloud = |id: &str| world.containers.get(id).is_some_and(|c| c.running_in_cloud);
        let mut moot = Vec::new();
        // A standing query about a container this observation does not list yet (asked
        // while the observation was taken) is not moot.
        self.pending.retain(|id, q| {
            let keep = in_cloud(id) || (q.standing && !world.containers.contains_key(id.as_str()));
            if !keep {
                moot.push(id.clone());
            }
            keep
        });
        let move_timeout = self.config.move_timeout_secs;
        self.accepted
            .retain(|id, since| in_cloud(id) && at - *since < move_timeout);
        let decline_cooldown = self.config.decline_cooldown_secs;
        self.declined
            .retain(|_, since| at - *since < decline_cooldown);
        self.offered_return
            .retain(|_, since| at - *since < decline_cooldown);
        moot
    }

    /// The one group a single host asks in: every cloud container, against the host.
    fn host_group(&self, at: f64, host: &HostSample) -> Group {
        let mut required = [0.0; 2];
        let mut resources = Vec::new();
        for p in self.pressure.iter().filter(|p| p.is_active()) {
            required[p.resource().index()] = p.projected() - p.watermark().low + RELIEF_EPSILON;
            resources.push(p.resource());
        }
        Group {
            node: None,
            cpus: host.cpus,
            mem_bytes: host.mem_total_bytes,
            required,
            text: self.pressure_text(at),
            of: "of the host".to_owned(),
            resources,
        }
    }

    /// Asks as many containers as it takes to bring each group's pressured resources
    /// below their low watermark, counting containers already asked or leaving as relief.
    /// Returns the asks and, when nobody is asked, why.
    fn ask_round(
        &mut self,
        at: f64,
        world: &World<'_>,
        mut groups: Vec<Group>,
    ) -> (Vec<Ask>, Option<String>) {
        let leaving: Vec<&str> = self
            .pending
            .keys()
            .chain(self.accepted.keys())
            .chain(self.relocation_pending.keys())
            .map(String::as_str)
            .collect();
        for group in &mut groups {
            for id in &leaving {
                if let Some(c) = world.containers.get(id)
                    && group.holds(c)
                {
                    let share = group.share(c);
                    for (r, need) in group.required.iter_mut().enumerate() {
                        *need -= share[r];
                    }
                }
            }
        }
        let relieved = |g: &Group| g.required.iter().all(|r| *r <= RELIEF_EPSILON);
        if groups.iter().all(relieved) {
            let waiting = leaving.len();
            return (
                Vec::new(),
                Some(format!("waiting on {waiting} container(s) asked or moving")),
            );
        }
        if let Some(last) = self.last_round_at {
            let wait = last + self.config.ask_cooldown_secs - at;
            if wait > 0.0 {
                return (
                    Vec::new(),
                    Some(format!("next round of queries in {} s", wait.ceil())),
                );
            }
        }

        let mut rooms: HashMap<&str, Room> = world
            .agents
            .values()
            .map(|a| {
                (
                    a.owner.as_str(),
                    Room {
                        cpus: finite_or_zero(a.cpus),
                        mem_bytes: a.mem_bytes,
                        disk_bytes: a.free_disk_bytes,
                    },
                )
            })
            .collect();
        // Containers already on their way take room on their owner's edge.
        for id in self.pending.keys().chain(self.accepted.keys()) {
            if let (Some(c), Some(needs)) = (
                world.containers.get(id.as_str()),
                world.needs.get(id.as_str()),
            ) && let Some(room) = rooms.get_mut(c.owner.as_str())
            {
                room.take(&room_for(needs));
            }
        }
        let decline_cooldown = self.config.decline_cooldown_secs;
        let deadline = secs(at + self.config.query_deadline_secs);
        let mut asks = Vec::new();
        for group in groups.iter().filter(|g| !relieved(g)) {
            let candidates: Vec<Candidate<'_>> = world
                .containers
                .values()
                .filter(|c| c.running_in_cloud && group.holds(c))
                .filter(|c| {
                    !self.pending.contains_key(&c.id)
                        && !self.accepted.contains_key(&c.id)
                        && !self.relocation_pending.contains_key(&c.id)
                        && !self.relocating.contains_key(&c.id)
                })
                .filter(|c| {
                    self.declined
                        .get(&c.id)
                        .is_none_or(|since| at - *since >= decline_cooldown)
                })
                .filter(|c| world.agents.contains_key(c.owner.as_str()))
                .filter_map(|c| {
                    let needs = world.needs.get(c.id.as_str())?;
                    Some(Candidate {
                        id: &c.id,
                        owner: &c.owner,
                        relief: group.share(c),
                        needs: room_for(needs),
                        move_bytes: needs.missing_bytes,
                    })
                })
                .collect();
            for i in relieving_set(&candidates, group.required, &rooms) {
                let c = &candidates[i];
                if let Some(room) = rooms.get_mut(c.owner) {
                    room.take(&c.needs);
                }
                let shares: Vec<String> = group
                    .resources
                    .iter()
                    .map(|r| format!("{} {} {r}", percent(c.relief[r.index()]), group.of))
                    .collect();
                asks.push(Ask {
                    container_id: c.id.to_owned(),
                    owner: c.owner.to_owned(),
                    reason: format!(
                        "{}; this container uses {}",
                        group.text,
                        shares.join(" and ")
                    ),
                    deadline,
                    move_bytes: c.move_bytes,
                });
            }
        }
        if asks.is_empty() {
            return (
                Vec::new(),
                Some("no container can be asked: none has an owner with a connected agent whose edge fits it".to_owned()),
            );
        }
        for ask in &asks {
            self.pending.insert(
                ask.container_id.clone(),
                PendingQuery {
                    owner: ask.owner.clone(),
                    asked_at: at,
                    standing: false,
                },
            );
        }
        self.last_round_at = Some(at);
        let note = format!("asked {} container(s) to move", asks.len());
        (asks, Some(note))
    }

    /// Once every resource has stayed below low for `return_after_secs`, offers returns to
    /// edge containers that fit back under the high watermarks (on a cluster: of the node
    /// with the most room). After a batch the calm window starts again, so the next batch
    /// is sized on usage that includes this one.
    fn offer_returns(
        &mut self,
        at: f64,
        host: &HostSample,
        world: &World<'_>,
        cluster: Option<&cluster::ClusterRound>,
    ) -> (Vec<Return>, Vec<Return>) {
        if !self.pressure.iter().all(Pressure::is_calm) {
            self.calm_since = None;
            return (Vec::new(), Vec::new());
        }
        let since = *self.calm_since.get_or_insert(at);
        let calm_for = at - since;
        if calm_for < self.config.return_after_secs {
            return (Vec::new(), Vec::new());
        }
        let edge: Vec<(&ContainerUsage, &AgentReport)> = world
            .containers
            .values()
            .filter(|c| !c.running_in_cloud && !self.offered_return.contains_key(&c.id))
            .filter_map(|c| Some((*c, *world.agents.get(c.owner.as_str())?)))
            .collect();
        let calm_text = self
            .pressure
            .iter()
            .map(|p| format!("{} {}", p.resource(), percent(p.usage())))
            .collect::<Vec<_>>()
            .join(", ");
        let chosen: Vec<(usize, String)> = match cluster {
            Some(round) => self.cluster_returns(&edge, round),
            None => {
                let homecomings: Vec<Homecoming<'_>> = edge
                    .iter()
                    .map(|(c, agent)| Homecoming {
                        id: &c.id,
                        share: host.share_of(c.cpu, c.mem_bytes),
                        auto_return: agent.auto_return,
                    })
                    .collect();
                let projected = self.pressure.each(Pressure::projected);
                let high = self.pressure.each(|p| p.watermark().high);
                fitting_returns(&homecomings, projected, high)
                    .into_iter()
                    .map(|i| {
                        let share = homecomings[i].share;
                        let text = format!(
                            "this container would use {} of its cpu and {} of its memory",
                            percent(share[0]),
                            percent(share[1]),
                        );
                        (i, text)
                    })
                    .collect()
            }
        };
        let mut moves = Vec::new();
        let mut notices = Vec::new();
        for (i, share_text) in chosen {
            let (c, agent) = edge[i];
            let reason = format!(
                "the cloud has room: {calm_text}, below the low watermarks for {} s; {share_text}",
                calm_for.round(),
            );
            let proposal = Return {
                container_id: c.id.clone(),
                owner: c.owner.clone(),
                reason,
            };
            self.offered_return.insert(c.id.clone(), at);
            if agent.auto_return {
                moves.push(proposal);
            } else {
                notices.push(proposal);
            }
        }
        if !moves.is_empty() || !notices.is_empty() {
            self.calm_since = Some(at);
        }
        (moves, notices)
    }

    /// The text of pressure on resource `i` of the cloud as a whole; on a cluster it
    /// says what drives it.
    fn describe(&self, i: usize, at: f64) -> String {
        let text = self.pressure[i].describe(at);
        match &self.cluster_note[i] {
            Some(note) => format!("{text} {note}"),
            None => text,
        }
    }

    fn pressure_text(&self, at: f64) -> String {
        (0..self.pressure.len())
            .filter(|&i| self.pressure[i].is_active())
            .map(|i| self.describe(i, at))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn status(&self, at: f64, ask_note: Option<String>, nodes: Vec<NodeStatus>) -> Status {
        let under_pressure = self.pressure.iter().any(Pressure::is_active);
        let reason = if under_pressure {
            match ask_note {
                Some(note) => format!("{}; {note}", self.pressure_text(at)),
                None => self.pressure_text(at),
            }
        } else {
            let levels = self
                .pressure
                .iter()
                .map(|p| format!("{} {}", p.resource(), percent(p.usage())))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{levels}; no pressure")
        };
        Status {
            at: secs(at),
            resources: self
                .pressure
                .iter()
                .map(|p| ResourceStatus {
                    resource: p.resource(),
                    usage: p.usage(),
                    forecast: p.forecast(),
                    watermark: p.watermark(),
                    pressure: p.is_active(),
                    trigger: p.trigger(),
                    above_high_for: p.above_high_for(at).map(secs),
                })
                .collect(),
            under_pressure,
            reason,
            pending_queries: self.pending.len(),
            moves_in_flight: self.accepted.len(),
            calm_for: self.calm_since.map(|since| secs(at - since)),
            nodes,
        }
    }
}

/// Containers relieved together: a whole host, or one node of a cluster.
struct Group {
    /// The node whose containers belong; `None`: every cloud container.
    node: Option<String>,
    /// Cores and bytes a container's share is taken of.
    cpus: f64,
    mem_bytes: u64,
    /// The relief each resource still needs.
    required: [f64; 2],
    /// The pressure, for the reason of a query.
    text: String,
    /// How a share is named: "of the host", "of node n1's".
    of: String,
    /// The resources under pressure, named in the reason.
    resources: Vec<Resource>,
}

impl Group {
    fn holds(&self, c: &ContainerUsage) -> bool {
        self.node.is_none() || c.node == self.node
    }

    fn share(&self, c: &ContainerUsage) -> [f64; 2] {
        share_of(self.cpus, self.mem_bytes, c)
    }
}

/// The share of `cpus` cores and `mem_bytes` bytes a container's use takes, per resource.
fn share_of(cpus: f64, mem_bytes: u64, c: &ContainerUsage) -> [f64; 2] {
    HostSample {
        cpus,
        mem_total_bytes: mem_bytes,
        ..HostSample::default()
    }
    .share_of(c.cpu, c.mem_bytes)
}

/// Seconds as a `Duration`, saturating instead of panicking on values out of range.
fn secs(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

fn room_for(needs: &MoveNeeds) -> Room {
    Room {
        cpus: finite_or_zero(needs.cpus),
        mem_bytes: needs.mem_bytes,
        disk_bytes: needs.missing_bytes,
    }
}

/// The observation indexed by id and owner. Ordered maps keep decisions deterministic.
struct World<'a> {
    containers: BTreeMap<&'a str, &'a ContainerUsage>,
    needs: HashMap<&'a str, &'a MoveNeeds>,
    agents: BTreeMap<&'a str, &'a AgentReport>,
}

impl<'a> World<'a> {
    fn new(observation: &'a Observation) -> Self {
        Self {
            containers: observation
                .containers
                .iter()
                .map(|c| (c.id.as_str(), c))
                .collect(),
            needs: observation
                .needs
                .iter()
                .map(|n| (n.id.as_str(), n))
                .collect(),
            agents: observation
                .agents
                .iter()
                .map(|a| (a.owner.as_str(), a))
                .collect(),
        }
    }
}

trait PerResource {
    fn each(&self, f: impl Fn(&Pressure) -> f64) -> [f64; 2];
}

impl PerResource for [Pressure; 2] {
    fn each(&self, f: impl Fn(&Pressure) -> f64) -> [f64; 2] {
        [f(&self[0]), f(&self[1])]
    }
}

mod cluster;
#[cfg(test)]
mod tests;
