//! The move state machine of DESIGN.md §4: generations, the phases of each direction, how
//! a move ends, and the two pure decisions the server's mover carries out — [`advance`]
//! (what follows a phase, given what happened in it) and [`settle`] (what to do with a move
//! nobody is running, from what the store, the engine and the agent say now).
//!
//! Nothing here does I/O, so every phase and event is tested below without engines.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ContainerId;
use crate::agent::Timings;
use crate::container::Location;

/// A container's fencing number. It grows on every move; a copy labelled with an older
/// generation than the record's is stale and must stop (I1). [`Generation::next`] and
/// [`Generation::fence`] are the only ways to compute one from another.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(u64);

impl Generation {
    /// The generation of a new container.
    pub const FIRST: Generation = Generation(1);

    /// A generation read from the store, a label or the wire.
    pub const fn new(value: u64) -> Self {
        Generation(value)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The generation the target copy of a move from `self` runs at.
    #[must_use]
    pub const fn next(self) -> Self {
        Generation(self.0.saturating_add(1))
    }

    /// A generation past anything a move from `self` may have started: a copy at
    /// [`Generation::next`] that turns up later is stale against it.
    #[must_use]
    pub const fn fence(self) -> Self {
        Generation(self.0.saturating_add(2))
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl utoipa::PartialSchema for Generation {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        u64::schema()
    }
}

impl utoipa::ToSchema for Generation {}

/// Which way a move goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveDirection {
    ToEdge,
    ToCloud,
    /// Inside the cloud, from one cluster node to another (relief of a busy node, a
    /// drain). The workspace root is shared by every node, so no file crosses.
    ToNode,
}

impl MoveDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveDirection::ToEdge => "to_edge",
            MoveDirection::ToCloud => "to_cloud",
            MoveDirection::ToNode => "to_node",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "to_edge" => Some(MoveDirection::ToEdge),
            "to_cloud" => Some(MoveDirection::ToCloud),
            "to_node" => Some(MoveDirection::ToNode),
            _ => None,
        }
    }

    pub fn target(self) -> Location {
        match self {
            MoveDirection::ToEdge => Location::Edge,
            MoveDirection::ToCloud | MoveDirection::ToNode => Location::Cloud,
        }
    }

    /// Where the container runs while the move has not yet succeeded.
    pub fn source(self) -> Location {
        match self {
            MoveDirection::ToEdge | MoveDirection::ToNode => Location::Cloud,
            MoveDirection::ToCloud => Location::Edge,
        }
    }

    /// The phase a move in this direction starts in.
    pub fn first_phase(self) -> MovePhase {
        match self {
            MoveDirection::ToEdge => MovePhase::ToEdge(ToEdge::Preparing),
            MoveDirection::ToCloud => MovePhase::ToCloud(ToCloud::StoppingEdge),
            MoveDirection::ToNode => MovePhase::ToNode(ToNode::StoppingNode),
        }
    }
}

/// The phases of a move to the edge, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ToEdge {
    /// The agent makes the image present and pre-copies the workspace while the cloud
    /// copy runs.
    Preparing,
    /// The cloud copy is being stopped.
    StoppingCloud,
    /// The agent pulls the final delta and starts its copy at the next generation.
    Finalizing,
}

/// The phases of a move back to the cloud, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ToCloud {
    /// The agent stops its copy and pushes its last changes.
    StoppingEdge,
    /// The edge confirmed stopped and synced; the cloud copy is being started.
    StartingCloud,
}

/// The phases of a move from one cluster node to another, in order. With the workspace
/// root shared by every node there is nothing to pre-copy and no final delta: the copy
/// stops on its node and a fresh one starts on the target at the next generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ToNode {
    /// The copy on its current node is being stopped.
    StoppingNode,
    /// It stopped; the copy on the target node is being started.
    StartingNode,
}

/// Where a move in flight is. A move to the cloud cannot be `Preparing`: the type has no
/// such value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovePhase {
    ToEdge(ToEdge),
    ToCloud(ToCloud),
    ToNode(ToNode),
}

impl MovePhase {
    /// Every phase, in the order of the three directions.
    pub const ALL: [MovePhase; 7] = [
        MovePhase::ToEdge(ToEdge::Preparing),
        MovePhase::ToEdge(ToEdge::StoppingCloud),
        MovePhase::ToEdge(ToEdge::Finalizing),
        MovePhase::ToCloud(ToCloud::StoppingEdge),
        MovePhase::ToCloud(ToCloud::StartingCloud),
        MovePhase::ToNode(ToNode::StoppingNode),
        MovePhase::ToNode(ToNode::StartingNode),
    ];

    pub fn direction(self) -> MoveDirection {
        match self {
            MovePhase::ToEdge(_) => MoveDirection::ToEdge,
            MovePhase::ToCloud(_) => MoveDirection::ToCloud,
            MovePhase::ToNode(_) => MoveDirection::ToNode,
        }
    }

    /// The name users and the store see.
    pub fn step(self) -> MoveStep {
        match self {
            MovePhase::ToEdge(ToEdge::Preparing) => MoveStep::Preparing,
            MovePhase::ToEdge(ToEdge::StoppingCloud) => MoveStep::StoppingCloud,
            MovePhase::ToEdge(ToEdge::Finalizing) => MoveStep::Finalizing,
            MovePhase::ToCloud(ToCloud::StoppingEdge) => MoveStep::StoppingEdge,
            MovePhase::ToCloud(ToCloud::StartingCloud) => MoveStep::StartingCloud,
            MovePhase::ToNode(ToNode::StoppingNode) => MoveStep::StoppingNode,
            MovePhase::ToNode(ToNode::StartingNode) => MoveStep::StartingNode,
        }
    }

    /// The phase a stored direction and step name, if they go together.
    pub fn from_parts(direction: MoveDirection, step: MoveStep) -> Option<Self> {
        let phase = match step {
            MoveStep::Preparing => MovePhase::ToEdge(ToEdge::Preparing),
            MoveStep::StoppingCloud => MovePhase::ToEdge(ToEdge::StoppingCloud),
            MoveStep::Finalizing => MovePhase::ToEdge(ToEdge::Finalizing),
            MoveStep::StoppingEdge => MovePhase::ToCloud(ToCloud::StoppingEdge),
            MoveStep::StartingCloud => MovePhase::ToCloud(ToCloud::StartingCloud),
            MoveStep::StoppingNode => MovePhase::ToNode(ToNode::StoppingNode),
            MoveStep::StartingNode => MovePhase::ToNode(ToNode::StartingNode),
        };
        (phase.direction() == direction).then_some(phase)
    }
}

/// The name of a move's phase, as the API and the store spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveStep {
    /// To edge: image ensured and workspace pre-copied while the cloud copy runs.
    Preparing,
    /// To edge: the cloud copy is being stopped.
    StoppingCloud,
    /// To edge: final delta and start at the edge; the edge may run the new generation.
    Finalizing,
    /// To cloud: the edge copy is being stopped and its last changes pushed.
    StoppingEdge,
    /// To cloud: the edge confirmed stopped and synced; the cloud copy is being started.
    StartingCloud,
    /// To another node: the copy on its node is being stopped.
    StoppingNode,
    /// To another node: the copy on the target node is being started.
    StartingNode,
}

impl MoveStep {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveStep::Preparing => "preparing",
            MoveStep::StoppingCloud => "stopping_cloud",
            MoveStep::Finalizing => "finalizing",
            MoveStep::StoppingEdge => "stopping_edge",
            MoveStep::StartingCloud => "starting_cloud",
            MoveStep::StoppingNode => "stopping_node",
            MoveStep::StartingNode => "starting_node",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "preparing" => MoveStep::Preparing,
            "stopping_cloud" => MoveStep::StoppingCloud,
            "finalizing" => MoveStep::Finalizing,
            "stopping_edge" => MoveStep::StoppingEdge,
            "starting_cloud" => MoveStep::StartingCloud,
            "stopping_node" => MoveStep::StoppingNode,
            "starting_node" => MoveStep::StartingNode,
            _ => return None,
        })
    }
}

/// A move in flight, as the store keeps it. Its phase is written before the phase's
/// action is taken (I4).
#[derive(Debug, Clone, PartialEq)]
pub struct MoveRecord {
    pub container_id: ContainerId,
    pub phase: MovePhase,
    pub from: Generation,
    /// `offload move --to cloud --force`: the edge was not asked.
    pub forced: bool,
    pub started_at: i64,
    pub timings: Timings,
}

impl MoveRecord {
    pub fn new(container_id: ContainerId, direction: MoveDirection, from: Generation) -> Self {
        MoveRecord {
            container_id,
            phase: direction.first_phase(),
            from,
            forced: false,
            started_at: 0,
            timings: Timings::default(),
        }
    }

    pub fn direction(&self) -> MoveDirection {
        self.phase.direction()
    }

    /// The generation the target copy runs at once the move is done.
    pub fn to(&self) -> Generation {
        self.from.next()
    }
}

/// How a move ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MoveOutcome {
    /// The container runs at the target.
    Done,
    /// The move did not happen; the container runs where it was (I5).
    RolledBack { reason: String },
    /// Neither side could be made to run the container; it is stopped, with the reason.
    Failed { reason: String },
}

impl MoveOutcome {
    /// The label of this outcome in metrics and events.
    pub fn as_str(&self) -> &'static str {
        match self {
            MoveOutcome::Done => "done",
            MoveOutcome::RolledBack { .. } => "rolled_back",
            MoveOutcome::Failed { .. } => "failed",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            MoveOutcome::Done => None,
            MoveOutcome::RolledBack { reason } | MoveOutcome::Failed { reason } => Some(reason),
        }
    }
}

/// How the last move of a container ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MoveReport {
    pub direction: MoveDirection,
    #[serde(flatten)]
    pub outcome: MoveOutcome,
    pub forced: bool,
    pub from_generation: Generation,
    pub to_generation: Generation,
    pub started_at: i64,
    pub finished_at: i64,
    pub timings: Timings,
}

/// What came of a phase's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseEvent {
    /// It did what the phase is for.
    Succeeded,
    /// It certainly did not happen, and the side that was asked still runs as before
    /// (the agent answered with an error, the engine refused).
    Failed(String),
    /// Nobody knows whether it happened: the agent vanished or did not answer in time.
    Lost(String),
}

/// How a move that will not go on leaves the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// Where the container runs afterwards.
    pub to: Location,
    /// The source copy may have been stopped by the move: start it again if it ran.
    pub restart: bool,
    /// The target may hold a copy at the move's next generation: the source copy runs at
    /// [`Generation::fence`] so that copy is stale wherever it turns up.
    pub fence: bool,
    pub reason: String,
}

/// What the mover does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record this phase, then take its action.
    Enter(MovePhase),
    /// The target copy runs at the move's next generation.
    Complete,
    /// The move ends without happening.
    RollBack(Rollback),
    /// The outcome is unknown and no copy may start until the edge says what it runs: the
    /// move stays recorded in its phase for [`settle`] (I1).
    AwaitEdge(String),
}

/// What follows `phase`, given what its action did.
pub fn advance(phase: MovePhase, event: PhaseEvent) -> Decision {
    use MovePhase::{ToCloud as C, ToEdge as E, ToNode as N};
    match (phase, event) {
        (E(ToEdge::Preparing), PhaseEvent::Succeeded) => Decision::Enter(E(ToEdge::StoppingCloud)),
        (E(ToEdge::StoppingCloud), PhaseEvent::Succeeded) => Decision::Enter(E(ToEdge::Finalizing)),
        (E(ToEdge::Finalizing), PhaseEvent::Succeeded) => Decision::Complete,
        // Preparing touches nothing that runs: whatever the agent did, the cloud copy is as
        // it was, and an aborted pre-copy starts nothing.
        (E(ToEdge::Preparing), PhaseEvent::Failed(reason) | PhaseEvent::Lost(reason)) => {
            Decision::RollBack(Rollback {
                to: Location::Cloud,
                restart: false,
                fence: false,
                reason,
            })
        }
        (E(ToEdge::StoppingCloud), PhaseEvent::Failed(reason) | PhaseEvent::Lost(reason)) => {
            Decision::RollBack(Rollback {
                to: Location::Cloud,
                restart: true,
                fence: false,
                reason,
            })
        }
        (E(ToEdge::Finalizing), PhaseEvent::Failed(reason)) => Decision::RollBack(Rollback {
            to: Location::Cloud,
            restart: true,
            fence: false,
            reason,
        }),
        (E(ToEdge::Finalizing), PhaseEvent::Lost(reason)) => Decision::AwaitEdge(reason),
        (C(ToCloud::StoppingEdge), PhaseEvent::Succeeded) => {
            Decision::Enter(C(ToCloud::StartingCloud))
        }
        (C(ToCloud::StartingCloud), PhaseEvent::Succeeded) => Decision::Complete,
        // The agent answers an error only after it started its copy again.
        (C(ToCloud::StoppingEdge), PhaseEvent::Failed(reason)) => Decision::RollBack(Rollback {
            to: Location::Edge,
            restart: false,
            fence: false,
            reason,
        }),
        // The edge copy may be stopped, its last push done or not: only the agent knows.
        (C(ToCloud::StoppingEdge), PhaseEvent::Lost(reason)) => Decision::AwaitEdge(reason),
        // The edge copy is stopped and everything is pushed: start it there again.
        (C(ToCloud::StartingCloud), PhaseEvent::Failed(reason) | PhaseEvent::Lost(reason)) => {
            Decision::RollBack(Rollback {
                to: Location::Edge,
                restart: true,
                fence: false,
                reason,
            })
        }
        (N(ToNode::StoppingNode), PhaseEvent::Succeeded) => {
            Decision::Enter(N(ToNode::StartingNode))
        }
        (N(ToNode::StartingNode), PhaseEvent::Succeeded) => Decision::Complete,
        // Both sides are the cloud's engine, which answers or refuses: the copy on its
        // node may have stopped, and nothing runs on the target (a start that fails
        // removes what it created). The container starts again where it was.
        (N(_), PhaseEvent::Failed(reason) | PhaseEvent::Lost(reason)) => {
            Decision::RollBack(Rollback {
                to: Location::Cloud,
                restart: true,
                fence: false,
                reason,
            })
        }
    }
}

/// What the owner's agent says of the container, if it is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeView {
    /// No agent of the owner is connected: the edge may run anything.
    Absent,
    /// The agent is connected and holds no copy of the container.
    NoCopy,
    /// The agent holds a copy at this generation.
    Copy {
        generation: Generation,
        running: bool,
    },
}

/// What is known of a move that no task is running (after a server restart, or while
/// its outcome is in doubt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub phase: MovePhase,
    pub from: Generation,
    pub edge: EdgeView,
}

/// The recovery decision for a move nobody runs: finish it, roll it back, run it on from
/// a phase, or wait for the edge. Never starts a copy while another may run (I1).
pub fn settle(world: World) -> Decision {
    use MovePhase::{ToCloud as C, ToEdge as E, ToNode as N};
    match world.phase {
        // Nothing was started at the edge: undo.
        E(ToEdge::Preparing) => Decision::RollBack(Rollback {
            to: Location::Cloud,
            restart: false,
            fence: false,
            reason: "interrupted while preparing the edge".into(),
        }),
        E(ToEdge::StoppingCloud) => Decision::RollBack(Rollback {
            to: Location::Cloud,
            restart: true,
            fence: false,
            reason: "interrupted while stopping the cloud copy".into(),
        }),
        E(ToEdge::Finalizing) => match world.edge {
            EdgeView::Absent => Decision::AwaitEdge(
                "the edge may run this container; waiting for its agent to report".into(),
            ),
            EdgeView::Copy {
                generation,
                running: true,
            } if generation == world.from.next() => Decision::Complete,
            // The edge holds no running copy at the new generation: the cloud copy runs
            // again, past any copy that could still turn up.
            _ => Decision::RollBack(Rollback {
                to: Location::Cloud,
                restart: true,
                fence: true,
                reason: "the edge did not start the container".into(),
            }),
        },
        C(ToCloud::StoppingEdge) => match world.edge {
            EdgeView::Absent => Decision::AwaitEdge(
                "waiting for the agent to stop the edge copy and push its last changes".into(),
            ),
            // Stopping and pushing are idempotent: run the return again.
            EdgeView::Copy { generation, .. } if generation == world.from => {
                Decision::Enter(C(ToCloud::StoppingEdge))
            }
            // The agent holds no copy of this generation: there is nothing to stop, and
            // its files are the ones it pushed last. The edge copy cannot run, so the cloud
            // starts on the acknowledged workspace.
            _ => Decision::Enter(C(ToCloud::StartingCloud)),
        },
        // The edge confirmed it stopped and pushed everything.
        C(ToCloud::StartingCloud) => Decision::Enter(C(ToCloud::StartingCloud)),
        // The copy may still run on its node: start it again there (a fresh copy
        // replaces whatever is left of it).
        N(ToNode::StoppingNode) => Decision::RollBack(Rollback {
            to: Location::Cloud,
            restart: true,
            fence: false,
            reason: "interrupted while stopping the copy on its node".into(),
        }),
        // The copy on the old node stopped before this phase was written; starting on
        // the target replaces any copy a start before the interruption left.
        N(ToNode::StartingNode) => Decision::Enter(N(ToNode::StartingNode)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Generation = Generation::new(7);

    fn events() -> [PhaseEvent; 3] {
        [
            PhaseEvent::Succeeded,
            PhaseEvent::Failed("refused".into()),
            PhaseEvent::Lost("vanished".into()),
        ]
    }

    #[test]
    fn generations_only_grow_and_the_fence_passes_the_next() {
        assert_eq!(G.next().get(), 8);
        assert_eq!(G.fence().get(), 9);
        assert!(G.fence() > G.next() && G.next() > G);
        assert_eq!(Generation::new(u64::MAX).next().get(), u64::MAX);
        assert_eq!(serde_json::to_string(&G).unwrap(), "7");
    }

    #[test]
    fn phases_round_trip_through_the_store_names_and_refuse_impossible_pairs() {
        for phase in MovePhase::ALL {
            let step = MoveStep::parse(phase.step().as_str()).unwrap();
            assert_eq!(MovePhase::from_parts(phase.direction(), step), Some(phase));
        }
        assert_eq!(
            MovePhase::from_parts(MoveDirection::ToCloud, MoveStep::Preparing),
            None
        );
        assert_eq!(
            MovePhase::from_parts(MoveDirection::ToEdge, MoveStep::StartingCloud),
            None
        );
    }

    #[test]
    fn a_successful_phase_leads_to_the_next_and_the_last_completes() {
        use MovePhase::{ToCloud as C, ToEdge as E, ToNode as N};
        let expected = [
            Decision::Enter(E(ToEdge::StoppingCloud)),
            Decision::Enter(E(ToEdge::Finalizing)),
            Decision::Complete,
            Decision::Enter(C(ToCloud::StartingCloud)),
            Decision::Complete,
            Decision::Enter(N(ToNode::StartingNode)),
            Decision::Complete,
        ];
        for (phase, want) in MovePhase::ALL.into_iter().zip(expected) {
            assert_eq!(advance(phase, PhaseEvent::Succeeded), want, "{phase:?}");
        }
        // Following the decisions from the first phase walks each direction in order.
        for direction in [
            MoveDirection::ToEdge,
            MoveDirection::ToCloud,
            MoveDirection::ToNode,
        ] {
            let mut phase = direction.first_phase();
            let mut seen = vec![phase];
            while let Decision::Enter(next) = advance(phase, PhaseEvent::Succeeded) {
                assert_eq!(next.direction(), direction);
                phase = next;
                seen.push(phase);
            }
            assert!(seen.len() == 3 || seen.len() == 2);
        }
    }

    #[test]
    fn failures_roll_back_to_the_source_and_restart_what_the_move_may_have_stopped() {
        for phase in MovePhase::ALL {
            for event in events() {
                let lost = matches!(event, PhaseEvent::Lost(_));
                let decision = advance(phase, event.clone());
                match (&event, decision) {
                    (PhaseEvent::Succeeded, d) => {
                        assert!(matches!(d, Decision::Enter(_) | Decision::Complete))
                    }
                    (_, Decision::RollBack(r)) => {
                        assert_eq!(r.to, phase.direction().source(), "{phase:?} {event:?}");
                        let stopped = matches!(
                            phase,
                            MovePhase::ToEdge(ToEdge::StoppingCloud | ToEdge::Finalizing)
                                | MovePhase::ToCloud(ToCloud::StartingCloud)
                                | MovePhase::ToNode(_)
                        );
                        assert_eq!(r.restart, stopped, "{phase:?} {event:?}");
                        // A rollback never fences: it is only taken when the target
                        // certainly runs nothing.
                        assert!(!r.fence);
                        assert!(!r.reason.is_empty());
                    }
                    (_, Decision::AwaitEdge(_)) => {
                        assert!(lost, "only a lost answer leaves the outcome unknown");
                        assert!(matches!(
                            phase,
                            MovePhase::ToEdge(ToEdge::Finalizing)
                                | MovePhase::ToCloud(ToCloud::StoppingEdge)
                        ));
                    }
                    (_, other) => panic!("{phase:?} {event:?} gave {other:?}"),
                }
            }
        }
    }

    #[test]
    fn an_edge_that_vanished_while_it_may_start_its_copy_is_waited_for() {
        // Defect: the cloud copy was started at once and two copies ran.
        let d = advance(
            MovePhase::ToEdge(ToEdge::Finalizing),
            PhaseEvent::Lost("the agent disconnected".into()),
        );
        assert_eq!(d, Decision::AwaitEdge("the agent disconnected".into()));
        let d = advance(
            MovePhase::ToCloud(ToCloud::StoppingEdge),
            PhaseEvent::Lost("the agent disconnected".into()),
        );
        assert!(matches!(d, Decision::AwaitEdge(_)));
    }

    fn world(phase: MovePhase, edge: EdgeView) -> World {
        World {
            phase,
            from: G,
            edge,
        }
    }

    fn edge_views() -> Vec<EdgeView> {
        let mut views = vec![EdgeView::Absent, EdgeView::NoCopy];
        for generation in [G, G.next(), G.fence()] {
            for running in [false, true] {
                views.push(EdgeView::Copy {
                    generation,
                    running,
                });
            }
        }
        views
    }

    #[test]
    fn settle_never_starts_a_copy_while_the_edge_may_run_one() {
        for phase in MovePhase::ALL {
            for edge in edge_views() {
                let decision = settle(world(phase, edge));
                let starts_cloud = match &decision {
                    Decision::RollBack(r) => r.to == Location::Cloud && r.restart,
                    Decision::Enter(MovePhase::ToCloud(ToCloud::StartingCloud)) => true,
                    _ => false,
                };
                let edge_may_run_new = match phase {
                    // Before the final phase the edge was never told to start.
                    MovePhase::ToEdge(ToEdge::Preparing | ToEdge::StoppingCloud) => false,
                    MovePhase::ToEdge(ToEdge::Finalizing) => matches!(
                        edge,
                        EdgeView::Absent | EdgeView::Copy { running: true, .. }
                    ),
                    // The edge confirmed its copy stopped before this phase was written.
                    MovePhase::ToCloud(ToCloud::StartingCloud) => false,
                    // A move between nodes never involves the edge.
                    MovePhase::ToNode(_) => false,
                    MovePhase::ToCloud(ToCloud::StoppingEdge) => {
                        matches!(
                            edge,
                            EdgeView::Absent | EdgeView::Copy { generation: G, .. }
                        )
                    }
                };
                if starts_cloud {
                    // A running copy at the fenced generation or above can only be one the
                    // agent already knows is stale; it is told to stop.
                    let fenced =
                        matches!(decision, Decision::RollBack(Rollback { fence: true, .. }));
                    assert!(
                        !edge_may_run_new || fenced,
                        "{phase:?} {edge:?} starts the cloud copy: {decision:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn settle_over_every_phase() {
        use MovePhase::{ToCloud as C, ToEdge as E};
        for edge in edge_views() {
            assert!(matches!(
                settle(world(E(ToEdge::Preparing), edge)),
                Decision::RollBack(Rollback {
                    to: Location::Cloud,
                    restart: false,
                    fence: false,
                    ..
                })
            ));
            assert!(matches!(
                settle(world(E(ToEdge::StoppingCloud), edge)),
                Decision::RollBack(Rollback {
                    to: Location::Cloud,
                    restart: true,
                    fence: false,
                    ..
                })
            ));
            assert_eq!(
                settle(world(C(ToCloud::StartingCloud), edge)),
                Decision::Enter(C(ToCloud::StartingCloud))
            );
            // Between nodes: a stop in doubt starts the copy again where it was; a start
            // in doubt is made again on the target.
            assert!(matches!(
                settle(world(MovePhase::ToNode(ToNode::StoppingNode), edge)),
                Decision::RollBack(Rollback {
                    to: Location::Cloud,
                    restart: true,
                    fence: false,
                    ..
                })
            ));
            assert_eq!(
                settle(world(MovePhase::ToNode(ToNode::StartingNode), edge)),
                Decision::Enter(MovePhase::ToNode(ToNode::StartingNode))
            );
            let finalizing = settle(world(E(ToEdge::Finalizing), edge));
            match edge {
                EdgeView::Absent => assert!(matches!(finalizing, Decision::AwaitEdge(_))),
                EdgeView::Copy {
                    generation,
                    running: true,
                } if generation == G.next() => assert_eq!(finalizing, Decision::Complete),
                _ => assert!(matches!(
                    finalizing,
                    Decision::RollBack(Rollback {
                        to: Location::Cloud,
                        restart: true,
                        fence: true,
                        ..
                    })
                )),
            }
            let returning = settle(world(C(ToCloud::StoppingEdge), edge));
            match edge {
                EdgeView::Absent => assert!(matches!(returning, Decision::AwaitEdge(_))),
                EdgeView::Copy { generation, .. } if generation == G => {
                    assert_eq!(returning, Decision::Enter(C(ToCloud::StoppingEdge)))
                }
                _ => assert_eq!(returning, Decision::Enter(C(ToCloud::StartingCloud))),
            }
        }
    }

    #[test]
    fn outcomes_serialise_as_the_api_always_showed_them() {
        let report = MoveReport {
            direction: MoveDirection::ToEdge,
            outcome: MoveOutcome::RolledBack {
                reason: "no room".into(),
            },
            forced: false,
            from_generation: G,
            to_generation: G,
            started_at: 1,
            finished_at: 2,
            timings: Timings::default(),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["outcome"], "rolled_back");
        assert_eq!(json["reason"], "no room");
        assert_eq!(json["from_generation"], 7);
        let back: MoveReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        // Reports stored before outcomes were typed carried `reason: null` on a done move.
        let old = serde_json::json!({
            "direction": "to_cloud", "outcome": "done", "reason": null, "forced": true,
            "from_generation": 2, "to_generation": 3, "started_at": 1, "finished_at": 2,
            "timings": {"bytes": 0}
        });
        let back: MoveReport = serde_json::from_value(old).unwrap();
        assert_eq!(back.outcome, MoveOutcome::Done);
    }
}
