//! End to end: `offload move ID --to edge --dry-run` says what would cross and how long
//! the move would take, moving nothing; after a real move `show` prints the prediction
//! beside what happened, and the next dry run learns from it.

mod common;

use common::{Cloud, Edge, IMAGE, stderr, stdout};

#[test]
fn a_dry_run_predicts_the_bytes_and_downtime_and_show_sets_them_beside_the_move() {
    let cloud = Cloud::start("dr-cloud");
    let alice = cloud.user("alice");
    let edge = Edge::start("dr-edge", &alice);
    let id = alice.start_sleeper("work");
    let out = alice.run(&[
        "shell",
        &id,
        "--",
        "sh",
        "-c",
        "dd if=/dev/urandom of=/workspace/data.bin bs=1M count=8 2>/dev/null && \
         mkdir /workspace/src && for i in 1 2 3 4 5; do echo $i > /workspace/src/$i.txt; done",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Before any move: every file would cross, the image would be streamed, and there is
    // nothing yet to time the link with.
    let text = alice.ok(&["move", &id, "--to", "edge", "--dry-run"]);
    assert!(text.contains("dry run: nothing moved"), "{text}");
    assert!(text.contains("6 files to write, 0 to remove"), "{text}");
    assert!(text.contains("streamed from the server"), "{text}");
    assert!(text.contains("no earlier move to learn from"), "{text}");
    let shown = alice.show(&id);
    assert_eq!(shown["location"], "cloud", "a dry run moves nothing");
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["generation"], 1);
    assert!(shown.get("last_move").is_none(), "{shown}");
    assert!(!edge.workspace(&id).exists(), "nothing written at the edge");
    assert!(
        edge.engine.image_id(IMAGE).expect("inspect").is_none(),
        "no image loaded at the edge"
    );

    // The real move records its prediction beside its timings.
    alice.ok(&["move", &id, "--to", "edge"]);
    let shown = alice.show(&id);
    let timings = &shown["last_move"]["timings"];
    let predicted = &timings["predicted"];
    let bytes = predicted["bytes"].as_u64().expect("predicted bytes");
    let crossed = timings["bytes"].as_u64().expect("bytes");
    assert!(bytes >= 8 << 20, "{shown}");
    assert!(
        crossed >= bytes * 9 / 10 && crossed <= bytes * 11 / 10 + 65536,
        "predicted {bytes}, crossed {crossed}"
    );
    assert!(
        predicted["image_bytes"].as_u64().unwrap_or(0) > 0,
        "{shown}"
    );
    let text = alice.ok(&["show", &id]);
    assert!(text.contains("predicted:"), "{text}");

    // Back to the cloud, one file changed there: the edge kept its copy, so only that
    // file would cross, the image is present, and the link and downtime are measured.
    alice.ok(&["move", &id, "--to", "cloud"]);
    alice.ok(&[
        "shell",
        &id,
        "--",
        "sh",
        "-c",
        "echo changed > /workspace/src/3.txt",
    ]);
    let before = alice.show(&id);
    let estimate: serde_json::Value =
        serde_json::from_str(&alice.ok(&["move", &id, "--to", "edge", "--dry-run", "-o", "json"]))
            .expect("json");
    assert_eq!(estimate["image"], "present", "{estimate}");
    assert_eq!(estimate["files"], 1, "{estimate}");
    let p = &estimate["prediction"];
    assert!(p["bytes"].as_u64().expect("bytes") < 1 << 20, "{estimate}");
    assert!(
        p["rate_bytes_per_sec"].as_u64().unwrap_or(0) > 0,
        "{estimate}"
    );
    assert!(p["downtime_ms"].as_u64().is_some(), "{estimate}");
    assert_eq!(p["samples"], 1, "{estimate}");
    let text = alice.ok(&["move", &id, "--to", "edge", "--dry-run"]);
    assert!(text.contains("already at the edge"), "{text}");
    assert!(text.contains("from 1 recent move"), "{text}");
    assert_eq!(alice.show(&id)["generation"], before["generation"]);

    // What a dry run refuses, changing nothing.
    let out = alice.run(&["move", &id, "--to", "cloud", "--dry-run"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("estimates a move to the edge"),
        "{}",
        stderr(&out)
    );
    let out = alice.run(&["move", "nosuch", "--to", "edge", "--dry-run"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("no such container"),
        "{}",
        stderr(&out)
    );
    let bob = cloud.user("bob");
    let out = bob.run(&["move", &id, "--to", "edge", "--dry-run"]);
    assert!(
        stderr(&out).contains("no such container"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    let out = alice.run(&["move", &id, "--to", "edge", "--dry-run", "--detach"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "--dry-run with --detach is refused"
    );
    assert_eq!(alice.show(&id)["location"], "cloud");
}
