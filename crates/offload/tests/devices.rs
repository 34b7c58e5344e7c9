//! End to end: one user, two devices. Each agent connects under its own name with what it
//! offers; the query about a container goes to the device that can run it, a move to a
//! named device lands there, and a device whose architecture does not match the image is
//! never asked.

mod common;

use common::{Cloud, Edge, IMAGE, User, copies, eventually, stderr};

fn devices(user: &User) -> Vec<serde_json::Value> {
    serde_json::from_str(&user.ok(&["devices", "-o", "json"])).expect("devices json")
}

fn queries(user: &User) -> Vec<serde_json::Value> {
    serde_json::from_str(&user.ok(&["queries", "-o", "json"])).expect("queries json")
}

/// Alice's laptop offers 512 MiB, her desktop 4 GiB.
fn two_devices(alice: &User) -> (Edge, Edge) {
    let laptop = Edge::start_with(
        "dv-laptop",
        alice,
        &["--device", "laptop", "--memory", "512m"],
    );
    let desktop = Edge::start_with(
        "dv-desktop",
        alice,
        &["--device", "desktop", "--memory", "4g", "--cpus", "2"],
    );
    (laptop, desktop)
}

#[test]
fn the_query_goes_to_the_device_that_fits_and_a_named_device_gets_the_move() {
    let cloud = Cloud::start("dv-cloud");
    let alice = cloud.user("alice");
    let root = cloud.admin("root");
    let (laptop, desktop) = two_devices(&alice);

    // Both are connected, side by side, with what each offers.
    let listed = devices(&alice);
    let names: Vec<&str> = listed.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["desktop", "laptop"], "{listed:?}");
    assert_eq!(listed[0]["memory_bytes"], 4u64 << 30);
    assert_eq!(listed[0]["cpus"], 2.0);
    assert_eq!(listed[1]["memory_bytes"], 512u64 << 20);
    assert!(
        listed.iter().all(|d| d["architecture"] == "amd64"),
        "{listed:?}"
    );

    // A 1 GiB container fits the desktop only: the query goes there, and only the
    // desktop's agent prompts.
    let big = alice.start_sleeper("big");
    root.ok(&["admin", "pressure", "--user", "alice"]);
    let asked = queries(&alice);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["container_id"], big.as_str());
    assert_eq!(asked[0]["device"], "desktop", "{asked:?}");
    let qid = asked[0]["id"].as_str().expect("query id").to_owned();
    let prompt = format!("offload accept {qid}");
    eventually(20, "the desktop's agent to prompt", || {
        desktop.log().contains(&prompt)
    });
    assert!(!laptop.log().contains(&prompt), "the laptop is not asked");

    // Named, the laptop is refused for it, and nothing changes.
    let out = alice.run(&["move", &big, "--to", "edge", "--device", "laptop"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("device laptop cannot run it: it may use 1024 MiB of memory"),
        "{}",
        stderr(&out)
    );
    let shown = alice.show(&big);
    assert_eq!(shown["location"], "cloud");
    assert_eq!(shown["generation"], 1);
    // A device that is not connected, and a name that is not one, are refused too.
    let out = alice.run(&[
        "move", &big, "--to", "edge", "--device", "phone", "--detach",
    ]);
    assert!(
        stderr(&out)
            .contains("no device phone is connected; the connected ones are desktop, laptop"),
        "{}",
        stderr(&out)
    );
    let out = alice.run(&["move", &big, "--to", "edge", "--device", "../x", "--detach"]);
    assert!(
        stderr(&out).contains("is not a device name"),
        "{}",
        stderr(&out)
    );

    // Accepted, it moves to the desktop.
    alice.ok(&["accept", &qid]);
    eventually(60, "big to run at the edge", || {
        let shown = alice.show(&big);
        shown["location"] == "edge" && shown["state"] == "running"
    });
    assert_eq!(alice.show(&big)["device"], "desktop");
    assert_eq!(copies(&desktop.engine, &big).len(), 1);
    assert!(copies(&laptop.engine, &big).is_empty());

    // A small one moves to the laptop when named, though the desktop has more room.
    let small = {
        let out = alice.ok(&[
            "start", "--name", "small", "--memory", "256m", IMAGE, "--", "sleep", "86400",
        ]);
        out.trim().to_owned()
    };
    let out = alice.run(&["move", &small, "--to", "edge", "--device", "laptop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(alice.show(&small)["device"], "laptop");
    assert_eq!(copies(&laptop.engine, &small).len(), 1);
    assert!(copies(&desktop.engine, &small).is_empty());
    let listed = devices(&alice);
    let held = |name: &str| -> Vec<String> {
        listed
            .iter()
            .find(|d| d["name"] == name)
            .and_then(|d| d["containers"].as_array())
            .map(|c| {
                c.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(held("laptop"), std::slice::from_ref(&small));
    assert_eq!(held("desktop"), std::slice::from_ref(&big));

    // Each comes back from its own device.
    for (id, edge) in [(&small, &laptop), (&big, &desktop)] {
        let out = alice.run(&["move", id, "--to", "cloud"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(alice.show(id)["location"], "cloud");
        assert!(copies(&edge.engine, id).is_empty());
    }
    let out = alice.run(&["move", &small, "--to", "cloud", "--device", "laptop"]);
    assert!(stderr(&out).contains("--device names where a move to the edge goes"));

    // Without a name, the device with the most room (the desktop, less nothing now).
    let out = alice.run(&["move", &small, "--to", "edge"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(alice.show(&small)["device"], "desktop");

    // The laptop going away leaves the desktop's container reachable.
    drop(laptop);
    eventually(20, "the laptop to go from the list", || {
        devices(&alice).len() == 1
    });
    assert_eq!(alice.show(&small)["state"], "running");
}

#[test]
fn a_device_of_another_architecture_is_never_asked() {
    let cloud = Cloud::start("dv-arch");
    cloud
        .engine
        .image_for_architecture(IMAGE, "offload-test/arm:1", "arm64")
        .expect("an arm64-labelled image");
    let alice = cloud.user("alice");
    let root = cloud.admin("root");
    let (laptop, desktop) = two_devices(&alice);
    let out = alice.ok(&[
        "start",
        "--name",
        "arm",
        "--memory",
        "256m",
        "offload-test/arm:1",
        "--",
        "sleep",
        "86400",
    ]);
    let id = out.trim().to_owned();

    let out = alice.run(&["move", &id, "--to", "edge"]);
    assert_ne!(out.status.code(), Some(0));
    let said = stderr(&out);
    assert!(
        said.contains("none of the connected devices can run it"),
        "{said}"
    );
    assert!(
        said.contains("laptop: its image is for arm64, the device is amd64"),
        "{said}"
    );
    assert!(said.contains("desktop: its image is for arm64"), "{said}");
    let out = alice.run(&["move", &id, "--to", "edge", "--dry-run"]);
    assert!(
        stderr(&out).contains("its image is for arm64"),
        "{}",
        stderr(&out)
    );

    // Under pressure, nobody is asked about it.
    let out = root.run(&["admin", "pressure", "--user", "alice"]);
    assert!(queries(&alice).is_empty(), "{}", common::stdout(&out));
    std::thread::sleep(std::time::Duration::from_secs(1));
    for edge in [&laptop, &desktop] {
        assert!(!edge.log().contains("offload accept"), "{}", edge.log());
    }
    assert_eq!(alice.show(&id)["location"], "cloud");
}
