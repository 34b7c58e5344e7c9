//! The mover against the fake engine and a scripted agent: every branch of a move,
//! every rollback, and the settling of moves in doubt.

use std::time::Duration;

use offload_core::agent::{Command, EdgeContainer, Reply, Timings};
use offload_core::api::MoveRequest;
use offload_core::moves::{ToCloud, ToEdge};
use offload_core::{
    ContainerId, ContainerRecord, Generation, Location, MoveOutcome, MovePhase, State,
};
use offload_runtime::fake::Op;

use crate::testing::{Answer, Rig, Script, rig};

fn prepared() -> Answer {
    Answer::Reply(Reply::Prepared {
        timings: Timings::default(),
    })
}

fn started(runtime_id: &str) -> Answer {
    Answer::Reply(Reply::Started {
        runtime_id: runtime_id.into(),
        timings: Timings::default(),
    })
}

fn stopped() -> Answer {
    Answer::Reply(Reply::Stopped {
        timings: Timings::default(),
    })
}

fn outcome(record: &ContainerRecord) -> MoveOutcome {
    record.last_move.clone().expect("a move report").outcome
}

fn edge_copy(generation: Generation, running: bool, id: &str) -> EdgeContainer {
    EdgeContainer {
        id: ContainerId::parse(id).expect("a valid id"),
        generation: generation.get(),
        runtime_id: Some("edge-rid".into()),
        running,
        synced: true,
    }
}

#[tokio::test]
async fn a_move_to_the_edge_stops_the_cloud_copy_and_records_the_new_generation() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    script
        .on("prepare", prepared())
        .on("finalize", started("edge-rid"));
    rig.connect(&script, Vec::new());
    rig.move_to(&rec, Location::Edge, false).await;
    let done = rig.settled(&rec.id).await;
    assert_eq!(outcome(&done), MoveOutcome::Done);
    assert_eq!(
        (done.location, done.state, done.generation),
        (Location::Edge, State::Running, Generation::new(2))
    );
    assert_eq!(done.runtime_id.as_deref(), Some("edge-rid"));
    assert!(rig.cloud_copies(&rec.id).is_empty(), "no cloud copy runs");
    assert_eq!(script.seen(), ["estimate", "prepare", "finalize"]);
    assert!(rig.in_flight(&rec.id).await.is_none());
}

#[tokio::test]
async fn a_failed_preparation_leaves_the_cloud_copy_untouched() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    script.on("prepare", Answer::Error("no disk space"));
    rig.connect(&script, Vec::new());
    rig.move_to(&rec, Location::Edge, false).await;
    let back = rig.settled(&rec.id).await;
    assert!(
        matches!(outcome(&back), MoveOutcome::RolledBack { reason } if reason.contains("no disk space"))
    );
    assert_eq!(
        (back.location, back.state, back.generation),
        (Location::Cloud, State::Running, Generation::FIRST)
    );
    assert_eq!(back.runtime_id, rec.runtime_id, "never stopped or replaced");
    assert!(
        !rig.fake
            .calls()
            .iter()
            .any(|c| matches!(c, offload_runtime::fake::Call::Stop(_)))
    );
    assert_eq!(script.seen(), ["estimate", "prepare", "abort"]);
}

#[tokio::test]
async fn a_cloud_image_that_vanished_rolls_back_before_the_agent_is_asked() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    rig.connect(&script, Vec::new());
    // The edge needs the image's id; without it the move cannot begin.
    rig.fake.forget_image("busybox");
    rig.move_to(&rec, Location::Edge, false).await;
    let back = rig.settled(&rec.id).await;
    assert!(matches!(outcome(&back), MoveOutcome::RolledBack { .. }));
    assert_eq!(back.state, State::Running);
    assert!(!script.seen().contains(&"prepare"));
}

#[tokio::test]
async fn a_cloud_stop_that_fails_rolls_back_and_the_cloud_copy_runs() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    script.on("prepare", prepared());
    rig.connect(&script, Vec::new());
    rig.fake.fail(Op::Stop, 1);
    rig.move_to(&rec, Location::Edge, false).await;
    let back = rig.settled(&rec.id).await;
    assert!(
        matches!(outcome(&back), MoveOutcome::RolledBack { reason } if reason.contains("stopping the cloud copy"))
    );
    assert_eq!(
        (back.location, back.state),
        (Location::Cloud, State::Running)
    );
    let copies = rig.cloud_copies(&rec.id);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(back.runtime_id.as_deref(), Some(copies[0].0.as_str()));
    assert!(!script.seen().contains(&"finalize"));
}

#[tokio::test]
async fn an_edge_that_refuses_to_start_rolls_back_to_a_running_cloud_copy_without_a_fence() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    script.on("prepare", prepared()).on(
        "finalize",
        Answer::Error("starting the container at the edge failed"),
    );
    rig.connect(&script, Vec::new());
    rig.move_to(&rec, Location::Edge, false).await;
    let back = rig.settled(&rec.id).await;
    assert!(matches!(outcome(&back), MoveOutcome::RolledBack { .. }));
    assert_eq!(
        (back.location, back.state, back.generation),
        (Location::Cloud, State::Running, Generation::FIRST)
    );
    assert_eq!(
        rig.cloud_copies(&rec.id),
        [(back.runtime_id.clone().unwrap(), "1".into())]
    );
    assert!(!script.seen().contains(&"fence"));
}

#[tokio::test]
async fn a_rollback_whose_cloud_restart_fails_keeps_trying_until_it_runs() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    script
        .on("prepare", prepared())
        .on("finalize", Answer::Error("no room"));
    rig.connect(&script, Vec::new());
    rig.fake.fail(Op::Run, usize::MAX);
    rig.move_to(&rec, Location::Edge, false).await;
    let back = rig.settled(&rec.id).await;
    assert_eq!(back.state, State::Starting, "{back:?}");
    assert!(back.reason.as_deref().unwrap().contains("keeps trying"));
    assert!(rig.cloud_copies(&rec.id).is_empty());
    // The engine comes back; the reconciler starts it.
    rig.fake.heal();
    rig.ctl.reconcile().await.unwrap();
    let now = rig.record(&rec.id).await;
    assert_eq!(now.state, State::Running);
    assert_eq!(rig.cloud_copies(&rec.id).len(), 1);
}

#[tokio::test]
async fn an_agent_lost_while_starting_its_copy_starts_no_cloud_copy_until_it_reports() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    script
        .on("prepare", prepared())
        .on("finalize", Answer::Vanish);
    rig.connect(&script, Vec::new());
    rig.move_to(&rec, Location::Edge, false).await;
    let doubt = rig.settled(&rec.id).await;
    assert_eq!(doubt.state, State::Moving);
    assert!(doubt.reason.as_deref().unwrap().contains("--force"));
    assert_eq!(
        rig.in_flight(&rec.id).await,
        Some(MovePhase::ToEdge(ToEdge::Finalizing))
    );
    assert!(rig.cloud_copies(&rec.id).is_empty(), "no second copy (I1)");
    // Rounds of the reconciler without the agent change nothing.
    rig.ctl.reconcile_round().await;
    rig.ctl.reconcile_round().await;
    assert!(rig.cloud_copies(&rec.id).is_empty());
    assert_eq!(rig.record(&rec.id).await.state, State::Moving);

    // The agent returns: its copy runs at the new generation, so the move is done.
    let back = Script::default();
    let link = rig.connect(
        &back,
        vec![edge_copy(Generation::new(2), true, rec.id.as_str())],
    );
    rig.ctl.on_agent_report(link, link_containers(&rig)).await;
    let done = rig.settled(&rec.id).await;
    assert_eq!(outcome(&done), MoveOutcome::Done);
    assert_eq!(
        (done.location, done.state, done.generation),
        (Location::Edge, State::Running, Generation::new(2))
    );
    assert_eq!(done.runtime_id.as_deref(), Some("edge-rid"));
    assert!(rig.cloud_copies(&rec.id).is_empty());
}

fn link_containers(rig: &Rig) -> Vec<EdgeContainer> {
    rig.ctl
        .hub
        .agent(&rig.who.user, None)
        .map(|l| l.containers())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_agent_that_returns_without_the_copy_gets_the_cloud_copy_back_past_a_fence() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    script
        .on("prepare", prepared())
        .on("finalize", Answer::Vanish);
    rig.connect(&script, Vec::new());
    rig.move_to(&rec, Location::Edge, false).await;
    rig.settled(&rec.id).await;
    let back = Script::default();
    let link = rig.connect(&back, Vec::new());
    rig.ctl.on_agent_report(link, Vec::new()).await;
    let rolled = rig.settled(&rec.id).await;
    assert!(matches!(outcome(&rolled), MoveOutcome::RolledBack { .. }));
    assert_eq!(
        (rolled.location, rolled.state, rolled.generation),
        (Location::Cloud, State::Running, Generation::new(3))
    );
    assert_eq!(
        rig.cloud_copies(&rec.id),
        [(rolled.runtime_id.clone().unwrap(), "3".into())]
    );
    assert!(
        back.commands()
            .iter()
            .any(|c| matches!(c, Command::Fence { generation: 3, .. }))
    );
}

#[tokio::test]
async fn a_move_in_doubt_can_be_forced_to_the_cloud_past_the_edge_generation() {
    let rig = rig();
    let rec = rig.start().await;
    let script = Script::default();
    script
        .on("prepare", prepared())
        .on("finalize", Answer::Vanish);
    rig.connect(&script, Vec::new());
    rig.move_to(&rec, Location::Edge, false).await;
    rig.settled(&rec.id).await;
    // A plain move is refused while the first is in doubt; a forced one ends it.
    let refused = rig
        .ctl
        .request_move(
            &rig.who,
            rec.id.as_str(),
            MoveRequest {
                to: Location::Cloud,
                force: false,
                device: None,
            },
        )
        .await;
    assert!(refused.is_err());
    rig.move_to(&rec, Location::Cloud, true).await;
    let forced = rig.settled(&rec.id).await;
    assert_eq!(outcome(&forced), MoveOutcome::Done);
    assert!(forced.last_move.as_ref().unwrap().forced);
    assert_eq!(
        (forced.location, forced.state, forced.generation),
        (Location::Cloud, State::Running, Generation::new(3))
    );
    assert_eq!(rig.cloud_copies(&rec.id).len(), 1);
    assert!(rig.in_flight(&rec.id).await.is_none());
}

/// A container at the edge at generation 2, as after a successful move.
async fn at_edge(rig: &Rig) -> ContainerRecord {
    let rec = rig.start().await;
    let script = Script::default();
    script
        .on("prepare", prepared())
        .on("finalize", started("edge-rid"));
    let link = rig.connect(&script, Vec::new());
    rig.move_to(&rec, Location::Edge, false).await;
    let rec = rig.settled(&rec.id).await;
    assert_eq!(rec.location, Location::Edge);
    rig.ctl.hub.unregister(&link);
    rec
}

#[tokio::test]
async fn a_return_starts_the_cloud_copy_at_the_next_generation_and_releases_the_edge() {
    let rig = rig();
    let rec = at_edge(&rig).await;
    let script = Script::default();
    script.on("stop_for_return", stopped());
    rig.connect(
        &script,
        vec![edge_copy(rec.generation, true, rec.id.as_str())],
    );
    rig.move_to(&rec, Location::Cloud, false).await;
    let done = rig.settled(&rec.id).await;
    assert_eq!(outcome(&done), MoveOutcome::Done);
    assert_eq!(
        (done.location, done.state, done.generation),
        (Location::Cloud, State::Running, Generation::new(3))
    );
    assert_eq!(
        rig.cloud_copies(&rec.id),
        [(done.runtime_id.clone().unwrap(), "3".into())]
    );
    assert_eq!(script.seen(), ["stop_for_return", "release"]);
}

#[tokio::test]
async fn a_return_the_edge_refuses_leaves_it_running_at_the_edge() {
    let rig = rig();
    let rec = at_edge(&rig).await;
    let script = Script::default();
    script.on("stop_for_return", Answer::Error("the final push failed"));
    rig.connect(
        &script,
        vec![edge_copy(rec.generation, true, rec.id.as_str())],
    );
    rig.move_to(&rec, Location::Cloud, false).await;
    let back = rig.settled(&rec.id).await;
    assert!(matches!(outcome(&back), MoveOutcome::RolledBack { .. }));
    assert_eq!(
        (back.location, back.state, back.generation),
        (Location::Edge, State::Running, Generation::new(2))
    );
    assert!(rig.cloud_copies(&rec.id).is_empty());
}

#[tokio::test]
async fn a_return_interrupted_while_stopping_the_edge_completes_when_the_agent_returns() {
    let rig = rig();
    let rec = at_edge(&rig).await;
    let script = Script::default();
    script.on("stop_for_return", Answer::Vanish);
    rig.connect(
        &script,
        vec![edge_copy(rec.generation, true, rec.id.as_str())],
    );
    rig.move_to(&rec, Location::Cloud, false).await;
    let doubt = rig.settled(&rec.id).await;
    assert_eq!(doubt.state, State::Moving);
    assert!(rig.cloud_copies(&rec.id).is_empty());
    // The agent comes back with its copy stopped: the return runs again and lands.
    let back = Script::default();
    back.on("stop_for_return", stopped());
    let link = rig.connect(
        &back,
        vec![edge_copy(rec.generation, false, rec.id.as_str())],
    );
    rig.ctl.on_agent_report(link, link_containers(&rig)).await;
    let done = rig.settled(&rec.id).await;
    assert_eq!(outcome(&done), MoveOutcome::Done, "{done:?}");
    assert_eq!(
        (done.location, done.state, done.generation),
        (Location::Cloud, State::Running, Generation::new(3))
    );
    assert_eq!(rig.cloud_copies(&rec.id).len(), 1);
}

#[tokio::test]
async fn a_cloud_start_that_fails_on_return_starts_the_edge_copy_again() {
    let rig = rig();
    let rec = at_edge(&rig).await;
    let script = Script::default();
    script
        .on("stop_for_return", stopped())
        .on("finalize", started("edge-rid-2"));
    rig.connect(
        &script,
        vec![edge_copy(rec.generation, true, rec.id.as_str())],
    );
    rig.fake.fail(Op::Run, 1);
    rig.move_to(&rec, Location::Cloud, false).await;
    let back = rig.settled(&rec.id).await;
    assert!(
        matches!(outcome(&back), MoveOutcome::RolledBack { reason } if reason.contains("starting in the cloud"))
    );
    assert_eq!(
        (back.location, back.state, back.generation),
        (Location::Edge, State::Running, Generation::new(2))
    );
    assert_eq!(back.runtime_id.as_deref(), Some("edge-rid-2"));
    assert!(
        script
            .commands()
            .iter()
            .any(|c| matches!(c, Command::Finalize { generation: 2, .. }))
    );
    assert!(rig.cloud_copies(&rec.id).is_empty());
}

#[tokio::test]
async fn a_forced_return_that_cannot_start_is_failed_and_retried_by_the_reconciler() {
    let rig = rig();
    let rec = at_edge(&rig).await;
    rig.fake.fail(Op::Run, usize::MAX);
    let err = rig
        .ctl
        .request_move(
            &rig.who,
            rec.id.as_str(),
            MoveRequest {
                to: Location::Cloud,
                force: true,
                device: None,
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keeps trying"), "{err}");
    let failed = rig.record(&rec.id).await;
    assert!(matches!(outcome(&failed), MoveOutcome::Failed { .. }));
    assert_eq!(
        (failed.location, failed.state, failed.generation),
        (Location::Cloud, State::Starting, Generation::new(3))
    );
    rig.fake.heal();
    rig.ctl.reconcile().await.unwrap();
    assert_eq!(rig.record(&rec.id).await.state, State::Running);
    assert_eq!(
        rig.cloud_copies(&rec.id)
            .into_iter()
            .map(|(_, g)| g)
            .collect::<Vec<_>>(),
        ["3"]
    );
}

#[tokio::test]
async fn moves_interrupted_by_a_restart_settle_from_their_recorded_phase() {
    let rig = rig();
    // Recorded as begun and interrupted at each phase before the edge could run a copy.
    for phase in [
        MovePhase::ToEdge(ToEdge::Preparing),
        MovePhase::ToEdge(ToEdge::StoppingCloud),
    ] {
        let mut rec = rig.start().await;
        let mut mv = offload_core::MoveRecord::new(
            rec.id.clone(),
            offload_core::MoveDirection::ToEdge,
            rec.generation,
        );
        mv.phase = phase;
        rec.state = State::Moving;
        if phase == MovePhase::ToEdge(ToEdge::StoppingCloud) {
            rig.fake.kill(rec.runtime_id.as_deref().unwrap());
        }
        let (r, m) = (rec.clone(), mv.clone());
        rig.ctl.db(move |s| s.begin_move(&r, &m)).await.unwrap();
        rig.ctl.settle_moves().await;
        let back = rig.settled(&rec.id).await;
        assert!(
            matches!(outcome(&back), MoveOutcome::RolledBack { .. }),
            "{phase:?}"
        );
        assert_eq!(
            (back.location, back.state),
            (Location::Cloud, State::Running)
        );
        assert_eq!(rig.cloud_copies(&rec.id).len(), 1, "{phase:?}");
    }
    // A return whose edge confirmed the stop completes in the cloud.
    let rec = at_edge(&rig).await;
    let mut mv = offload_core::MoveRecord::new(
        rec.id.clone(),
        offload_core::MoveDirection::ToCloud,
        rec.generation,
    );
    mv.phase = MovePhase::ToCloud(ToCloud::StartingCloud);
    let mut moving = rec.clone();
    moving.state = State::Moving;
    rig.ctl
        .db(move |s| s.begin_move(&moving, &mv))
        .await
        .unwrap();
    rig.ctl.settle_moves().await;
    let done = rig.settled(&rec.id).await;
    assert_eq!(outcome(&done), MoveOutcome::Done);
    assert_eq!(done.generation, Generation::new(3));
    assert_eq!(rig.cloud_copies(&rec.id).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cloud_copy_stopped_behind_offloads_back_is_started_again_with_back_off() {
    let rig = rig();
    let rec = rig.start().await;
    let rid = rec.runtime_id.clone().unwrap();
    // The engine restarted: the container exists and is stopped.
    rig.fake.kill(&rid);
    let report = rig.ctl.reconcile().await.unwrap();
    assert_eq!(report.restarted, 1);
    assert_eq!(rig.fake.running(), vec![rid.clone()]);
    // It keeps dying at once: the next start waits for the back-off.
    rig.fake.kill(&rid);
    let report = rig.ctl.reconcile().await.unwrap();
    assert_eq!(report.restarted, 0);
    tokio::time::advance(Duration::from_secs(11)).await;
    let report = rig.ctl.reconcile().await.unwrap();
    assert_eq!(report.restarted, 1);
    // A container its owner stopped stays stopped.
    rig.ctl.stop(&rig.who, rec.id.as_str()).await.unwrap();
    tokio::time::advance(Duration::from_secs(600)).await;
    rig.ctl.reconcile().await.unwrap();
    assert!(rig.fake.running().is_empty());
    assert_eq!(rig.record(&rec.id).await.state, State::Stopped);
}
