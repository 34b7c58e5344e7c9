//! End to end: the agent's desktop notifications. The test starts a private D-Bus session
//! bus (`dbus-daemon`) and a small notification server on it that records every call and
//! has buttons (the `actions` capability); the real agent, pointed at that bus, shows the
//! query there, and invoking its Accept action moves the container to the edge. The move's
//! start and end come as notices too.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{Cloud, Edge, eventually};
use zbus::object_server::SignalEmitter;

/// One `Notify` call: summary, body, actions, expiry.
#[derive(Debug, Clone)]
struct Shown {
    id: u32,
    summary: String,
    body: String,
    actions: Vec<String>,
    expire_timeout: i32,
}

#[derive(Clone, Default)]
struct Server {
    shown: Arc<Mutex<Vec<Shown>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Server {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        _app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        _hints: HashMap<String, zbus::OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        let mut shown = self.shown.lock().expect("lock");
        let id = u32::try_from(shown.len()).unwrap_or(u32::MAX) + 1;
        shown.push(Shown {
            id,
            summary,
            body,
            actions,
            expire_timeout,
        });
        id
    }

    fn close_notification(&self, _id: u32) {}

    fn get_capabilities(&self) -> Vec<String> {
        vec!["actions".into(), "body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "offload-test-notifications".into(),
            "offload".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    #[zbus(signal)]
    async fn action_invoked(
        emitter: &SignalEmitter<'_>,
        id: u32,
        action_key: &str,
    ) -> zbus::Result<()>;
}

/// A session bus of the test's own.
struct Bus {
    daemon: Child,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Bus {
        let socket = dir.join("bus");
        let address = format!("unix:path={}", socket.display());
        let daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon starts (apt-get install dbus-daemon)");
        eventually(10, "the session bus", || socket.exists());
        Bus { daemon, address }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

#[test]
fn a_query_on_the_desktop_is_accepted_with_its_button_and_the_move_is_announced() {
    let dir = tempfile::tempdir().expect("dir");
    let bus = Bus::start(dir.path());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = Server::default();
    let connection = runtime
        .block_on(
            zbus::conn::Builder::address(bus.address.as_str())
                .name("org.freedesktop.Notifications")
                .serve_at("/org/freedesktop/Notifications", server.clone())
                .build(),
        )
        .expect("the notification server is on the bus");

    let cloud = Cloud::start("notify-cloud");
    let root = cloud.admin("root");
    let alice = cloud.user("alice");
    let edge = Edge::start_with_env(
        "notify-edge",
        &alice,
        &[],
        &[("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str())],
    );
    eventually(10, "the agent to find the notification server", || {
        edge.log().contains("desktop notifications on")
    });
    let id = alice.start_sleeper("box");
    root.ok(&["admin", "pressure", "--user", "alice"]);

    let shown = |f: &dyn Fn(&Shown) -> bool| -> Option<Shown> {
        server
            .shown
            .lock()
            .expect("lock")
            .iter()
            .find(|s| f(s))
            .cloned()
    };
    let mut query = None;
    eventually(20, "the query on the desktop", || {
        query = shown(&|s| s.summary.contains("Move box to this machine?"));
        query.is_some()
    });
    let query = query.expect("shown");
    assert_eq!(
        query.actions,
        ["accept", "Accept", "decline", "Decline"],
        "{query:?}"
    );
    assert!(query.body.contains("Answer within"), "{query:?}");
    assert!(query.expire_timeout > 0, "it goes away at the deadline");
    assert_eq!(
        alice.show(&id)["location"],
        "cloud",
        "nothing before the click"
    );

    let emitter =
        SignalEmitter::new(&connection, "/org/freedesktop/Notifications").expect("emitter");
    runtime
        .block_on(Server::action_invoked(&emitter, query.id, "accept"))
        .expect("the Accept action is invoked");
    eventually(90, "the container at the edge", || {
        alice.show(&id)["location"] == "edge"
    });
    eventually(20, "the move announced", || {
        shown(&|s| s.body.contains("box is moving to this machine")).is_some()
            && shown(&|s| s.body.contains("box now runs on this machine")).is_some()
    });
    assert!(
        edge.log().contains("query") && edge.log().contains("accepted"),
        "{}",
        edge.log()
    );
}
