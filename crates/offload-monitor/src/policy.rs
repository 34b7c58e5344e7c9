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
        let usage = [finite_or_zero(host.cpu), finite_or_zero(host.mem)];
        let world = World::new(observation);

        let mut pressure_started = Vec::new();
        let mut pressure_ended = Vec::new();
        for p in &mut self.pressure {
            match p.update(at, usage[p.resource().index()], new_sample) {
                Change::Started => pressure_started.push(PressureEvent {
                    resource: p.resource(),
                    trigger: p.trigger().unwrap_or(Trigger::Sustained),
                    reason: p.describe(at),
                }),
                Change::Ended => pressure_ended.push(p.resource()),
                Change::Unchanged => {}
            }
        }

        let expired = self.expire_queries(at, &world);
        let mut withdrawn = self.forget_finished(at, &world);
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
            self.ask_round(at, &host, &world)
        } else {
            (Vec::new(), None)
        };
        let (return_moves, return_notices) = self.offer_returns(at, &host, &world);

        Decision {
            pressure_started,
            pressure_ended,
            ask,
            expired,
            withdrawn,
            return_moves,
            return_notices,
            status: self.status(at, ask_note),
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

    /// Asks as many containers as it takes to bring the pressured resources below their
    /// low watermark, counting containers already asked or leaving as relief. Returns the
    /// asks and, when nobody is asked, why.
    fn ask_round(
        &mut self,
        at: f64,
        host: &HostSample,
        world: &World<'_>,
    ) -> (Vec<Ask>, Option<String>) {
        let mut required = [0.0; 2];
        for p in self.pressure.iter().filter(|p| p.is_active()) {
            required[p.resource().index()] = p.projected() - p.watermark().low + RELIEF_EPSILON;
        }
        let leaving: Vec<&str> = self
            .pending
            .keys()
            .chain(self.accepted.keys())
            .map(String::as_str)
            .collect();
        for id in &leaving {
            if let Some(c) = world.containers.get(id) {
                let share = host.share_of(c.cpu, c.mem_bytes);
                for (r, need) in required.iter_mut().enumerate() {
                    *need -= share[r];
                }
            }
        }
        if required.iter().all(|r| *r <= RELIEF_EPSILON) {
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
        for id in &leaving {
            if let (Some(c), Some(needs)) = (world.containers.get(id), world.needs.get(id))
                && let Some(room) = rooms.get_mut(c.owner.as_str())
            {
                room.take(&room_for(needs));
            }
        }
        let decline_cooldown = self.config.decline_cooldown_secs;
        let candidates: Vec<Candidate<'_>> = world
            .containers
            .values()
            .filter(|c| c.running_in_cloud)
            .filter(|c| !self.pending.contains_key(&c.id) && !self.accepted.contains_key(&c.id))
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
                    relief: host.share_of(c.cpu, c.mem_bytes),
                    needs: room_for(needs),
                    move_bytes: needs.missing_bytes,
                })
            })
            .collect();
        let picks = relieving_set(&candidates, required, &rooms);
        if picks.is_empty() {
            return (
                Vec::new(),
                Some("no container can be asked: none has an owner with a connected agent whose edge fits it".to_owned()),
            );
        }

        let pressure_text = self.pressure_text(at);
        let deadline = secs(at + self.config.query_deadline_secs);
        let mut asks = Vec::new();
        for i in picks {
            let c = &candidates[i];
            let shares: Vec<String> = self
                .pressure
                .iter()
                .filter(|p| p.is_active())
                .map(|p| {
                    format!(
                        "{} of the host {}",
                        percent(c.relief[p.resource().index()]),
                        p.resource()
                    )
                })
                .collect();
            asks.push(Ask {
                container_id: c.id.to_owned(),
                owner: c.owner.to_owned(),
                reason: format!(
                    "{pressure_text}; this container uses {}",
                    shares.join(" and ")
                ),
                deadline,
                move_bytes: c.move_bytes,
            });
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
    /// edge containers that fit back under the high watermarks. After a batch the calm
    /// window starts again, so the next batch is sized on usage that includes this one.
    fn offer_returns(
        &mut self,
        at: f64,
        host: &HostSample,
        world: &World<'_>,
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
        let chosen = fitting_returns(&homecomings, projected, high);
        let mut moves = Vec::new();
        let mut notices = Vec::new();
        let calm_text = self
            .pressure
            .iter()
            .map(|p| format!("{} {}", p.resource(), percent(p.usage())))
            .collect::<Vec<_>>()
            .join(", ");
        for i in chosen {
            let (c, agent) = edge[i];
            let share = homecomings[i].share;
            let reason = format!(
                "the cloud has room: {calm_text}, below the low watermarks for {} s; \
                 this container would use {} of its cpu and {} of its memory",
                calm_for.round(),
                percent(share[0]),
                percent(share[1]),
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

    fn pressure_text(&self, at: f64) -> String {
        self.pressure
            .iter()
            .filter(|p| p.is_active())
            .map(|p| p.describe(at))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn status(&self, at: f64, ask_note: Option<String>) -> Status {
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
        }
    }
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

#[cfg(test)]
mod tests;
