//! Test support for the server's unit tests: a controller over the fake engine and an
//! in-memory store, and a scripted agent registered in the hub.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offload_core::agent::{Command, EdgeCapacity, EdgeContainer, Reply, ServerMessage};
use offload_core::api::{MoveRequest, StartRequest};
use offload_core::{ContainerRecord, Location, MovePhase, UserName, labels};
use offload_runtime::ContainerRuntime;
use offload_runtime::fake::FakeRuntime;
use offload_store::{Principal, Store};

use crate::config::ServerConfig;
use crate::controller::Controller;
use crate::hub::{AgentLink, Hello};

/// What the scripted agent does with one command.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Reply(Reply),
    Error(&'static str),
    /// The agent's connection drops before it answers.
    Vanish,
}

/// The answers still to give, per kind of command.
type Answers = Vec<(&'static str, VecDeque<Answer>)>;

/// A scripted agent: answers commands from a queue per kind, records every command.
#[derive(Clone, Default)]
pub(crate) struct Script {
    answers: Arc<Mutex<Answers>>,
    seen: Arc<Mutex<Vec<Command>>>,
}

fn kind(command: &Command) -> &'static str {
    match command {
        Command::Estimate { .. } => "estimate",
        Command::Prepare { .. } => "prepare",
        Command::Finalize { .. } => "finalize",
        Command::Abort { .. } => "abort",
        Command::StopForReturn { .. } => "stop_for_return",
        Command::Release { .. } => "release",
        Command::Fence { .. } => "fence",
    }
}

impl Script {
    pub fn on(&self, command: &'static str, answer: Answer) -> &Self {
        let mut answers = self.answers.lock().unwrap();
        match answers.iter_mut().find(|(k, _)| *k == command) {
            Some((_, queue)) => queue.push_back(answer),
            None => answers.push((command, VecDeque::from([answer]))),
        }
        self
    }

    pub fn answer(&self, command: &Command) -> Answer {
        self.seen.lock().unwrap().push(command.clone());
        let mut answers = self.answers.lock().unwrap();
        answers
            .iter_mut()
            .find(|(k, _)| *k == kind(command))
            .and_then(|(_, queue)| queue.pop_front())
            .unwrap_or(Answer::Reply(Reply::Done))
    }

    pub fn seen(&self) -> Vec<&'static str> {
        self.seen.lock().unwrap().iter().map(kind).collect()
    }

    pub fn commands(&self) -> Vec<Command> {
        self.seen.lock().unwrap().clone()
    }
}

pub(crate) struct Rig {
    _dir: tempfile::TempDir,
    pub ctl: Arc<Controller>,
    pub fake: FakeRuntime,
    pub who: Principal,
}

/// A controller over the fake engine (with a `busybox` image) and an in-memory store
/// that knows the user `alice`.
pub(crate) fn controller() -> (tempfile::TempDir, Controller, FakeRuntime, Principal) {
    controller_with(|_| {})
}

/// As [`controller`], with the server configuration changed by `configure`.
pub(crate) fn controller_with(
    configure: impl FnOnce(&mut ServerConfig),
) -> (tempfile::TempDir, Controller, FakeRuntime, Principal) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_in_memory().unwrap());
    let fake = FakeRuntime::new();
    fake.add_image("busybox");
    let mut config = ServerConfig {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    configure(&mut config);
    let who = Principal {
        user: UserName::parse("alice").unwrap(),
        admin: false,
    };
    store.upsert_user(&who.user, false, 0).unwrap();
    let ctl = Controller::new(store, Arc::new(fake.clone()), config).unwrap();
    (dir, ctl, fake, who)
}

pub(crate) fn rig() -> Rig {
    rig_with(|_| {})
}

/// As [`rig`], with the server configuration changed by `configure`.
pub(crate) fn rig_with(configure: impl FnOnce(&mut ServerConfig)) -> Rig {
    let (dir, ctl, fake, who) = controller_with(configure);
    let ctl = Arc::new(ctl);
    Rig {
        _dir: dir,
        ctl,
        fake,
        who,
    }
}

fn capacity() -> EdgeCapacity {
    EdgeCapacity {
        cpus: 4.0,
        memory_bytes: 8 << 30,
        free_disk_bytes: 100 << 30,
        architecture: "amd64".into(),
        hostname: "laptop".into(),
    }
}

impl Rig {
    /// Connects a scripted agent holding `containers`; it answers until it vanishes.
    pub fn connect(&self, script: &Script, containers: Vec<EdgeContainer>) -> Arc<AgentLink> {
        let (link, mut outbox) = self.ctl.hub.register(
            self.who.user.clone(),
            Hello {
                device: "laptop".to_owned(),
                capacity: capacity(),
                images: Vec::new(),
                containers,
                auto_accept: false,
                auto_return: false,
            },
        );
        let (script, hub, me) = (script.clone(), self.ctl.hub.clone(), link.clone());
        tokio::spawn(async move {
            while let Some(message) = outbox.recv().await {
                let ServerMessage::Request { request, command } = message else {
                    continue;
                };
                match script.answer(&command) {
                    Answer::Reply(reply) => me.complete(request, Ok(reply)),
                    Answer::Error(e) => me.complete(request, Err(e.to_owned())),
                    Answer::Vanish => {
                        hub.unregister(&me);
                        break;
                    }
                }
            }
        });
        link
    }

    pub async fn start(&self) -> ContainerRecord {
        let req = StartRequest {
            image: "busybox".into(),
            ..Default::default()
        };
        self.ctl.start(&self.who, req).await.unwrap()
    }

    pub async fn record(&self, id: &offload_core::ContainerId) -> ContainerRecord {
        self.ctl.reload(id).await.unwrap()
    }

    pub async fn move_to(&self, record: &ContainerRecord, to: Location, force: bool) {
        self.ctl
            .request_move(
                &self.who,
                record.id.as_str(),
                MoveRequest {
                    to,
                    force,
                    device: None,
                },
            )
            .await
            .unwrap();
    }

    /// Waits until the container's move ended or is in doubt (its lock is free).
    pub async fn settled(&self, id: &offload_core::ContainerId) -> ContainerRecord {
        for _ in 0..500 {
            if let Some(_guard) = self.ctl.try_lock(id) {
                return self.record(id).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the move of {id} did not end");
    }

    pub async fn in_flight(&self, id: &offload_core::ContainerId) -> Option<MovePhase> {
        let id = id.clone();
        self.ctl
            .db(move |s| s.move_of(&id))
            .await
            .unwrap()
            .map(|m| m.phase)
    }

    /// Engine containers of `id` that run in the cloud, with their generation labels.
    pub fn cloud_copies(&self, id: &offload_core::ContainerId) -> Vec<(String, String)> {
        let running = self.fake.running();
        futures::executor::block_on(self.fake.list_labelled(labels::ID))
            .unwrap()
            .into_iter()
            .filter(|c| c.labels.get(labels::ID).map(String::as_str) == Some(id.as_str()))
            .filter(|c| running.contains(&c.runtime_id))
            .map(|c| (c.runtime_id, c.labels[labels::GENERATION].clone()))
            .collect()
    }
}

/// A cluster node as the monitor reports it: 2 cores and 40 MiB, CPU calm, memory at
/// `memory` (watermarks 0.5 / 0.7) and under pressure or not.
pub(crate) fn node_status(name: &str, memory: f64, pressure: bool) -> offload_monitor::NodeStatus {
    use offload_monitor::{Resource, ResourceStatus, Watermark};
    let status = |resource, usage, pressure| ResourceStatus {
        resource,
        usage,
        forecast: usage,
        watermark: Watermark {
            low: 0.5,
            high: 0.7,
        },
        pressure,
        trigger: None,
        above_high_for: None,
    };
    offload_monitor::NodeStatus {
        id: format!("{name}-id"),
        name: name.to_owned(),
        schedulable: !pressure,
        cpus: 2.0,
        mem_bytes: 40 << 20,
        resources: vec![
            status(Resource::Cpu, 0.1, false),
            status(Resource::Memory, memory, pressure),
        ],
        under_pressure: pressure,
        stuck: pressure,
    }
}
