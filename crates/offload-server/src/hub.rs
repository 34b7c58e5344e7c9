//! The agents connected to this server: one control link per device of each user,
//! requests with replies, progress reports of the moves in flight, and the rendezvous of
//! exec relays.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::WebSocket;
use offload_core::agent::{Channel, Command, EdgeCapacity, EdgeContainer, Reply, ServerMessage};
use offload_core::api::Progress;
use offload_core::{ContainerId, UserName};
use tokio::sync::{mpsc, oneshot};

/// Why a request to an agent did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0} is not connected; start `offload agent` on the edge machine")]
    NotConnected(String),
    #[error("the agent disconnected before answering")]
    Disconnected,
    #[error("the agent did not answer within {0} s")]
    Timeout(u64),
    #[error("the agent reported: {0}")]
    Failed(String),
}

impl HubError {
    /// The agent may have acted on the request: its outcome is unknown.
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, HubError::Disconnected | HubError::Timeout(_))
    }
}

/// Names the agent a message is for: "alice's agent", or "alice's device desktop".
pub fn agent_name(user: &UserName, device: Option<&str>) -> String {
    match device {
        Some(device) => format!("{user}'s device {device}"),
        None => format!("{user}'s agent"),
    }
}

/// One connected agent.
pub struct AgentLink {
    pub user: UserName,
    /// The device it runs on (`offload agent --device`).
    pub device: String,
    /// Distinguishes successive connections of the same user.
    pub connection: u64,
    pub capacity: EdgeCapacity,
    pub images: Vec<String>,
    pub auto_accept: bool,
    pub auto_return: bool,
    containers: Mutex<Vec<EdgeContainer>>,
    tx: mpsc::UnboundedSender<ServerMessage>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Reply, String>>>>,
    /// Cancelled when the operator cuts the user off: the connection ends.
    pub(crate) cut: tokio_util::sync::CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentLink {
    pub fn containers(&self) -> Vec<EdgeContainer> {
        lock(&self.containers).clone()
    }

    pub fn set_containers(&self, containers: Vec<EdgeContainer>) {
        *lock(&self.containers) = containers;
    }

    /// Sends a message without waiting for anything.
    pub fn send(&self, message: ServerMessage) -> bool {
        self.tx.send(message).is_ok()
    }

    /// Delivers a reply to whoever waits for it.
    pub fn complete(&self, request: u64, result: Result<Reply, String>) {
        if let Some(waiter) = lock(&self.pending).remove(&request) {
            let _ = waiter.send(result);
        }
    }
}

/// Every connected agent, by user and device.
#[derive(Default)]
pub struct AgentHub {
    agents: Mutex<HashMap<UserName, BTreeMap<String, Arc<AgentLink>>>>,
    /// Channels an agent was asked to dial back, by session: the agent they were asked
    /// of and the user waiting for the socket.
    channel_waiters: Mutex<HashMap<String, (UserName, oneshot::Sender<WebSocket>)>>,
    /// The moves in flight, each with the user and device whose agent is their edge
    /// side: only that agent may report progress for them.
    moves: Mutex<HashMap<ContainerId, (UserName, String)>>,
    /// Move commands (prepare, finalize, stop for return) sent and not yet answered, by
    /// container: their agent reports progress while it carries them out.
    commands: Arc<Mutex<HashMap<ContainerId, Commanded>>>,
    progress: Mutex<HashMap<ContainerId, Progress>>,
    next: AtomicU64,
    /// When the cloud last had every change of each edge container (Unix seconds): the
    /// agent said so, or a push of it was applied.
    synced_at: Mutex<HashMap<ContainerId, i64>>,
}

/// A container's move commands awaiting an answer: the user and device they went to,
/// and how many.
type Commanded = (UserName, String, usize);

/// How long the server waits for an agent to dial back a channel it was asked to open.
const CHANNEL_DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest progress phase kept, in characters.
pub const MAX_PHASE_CHARS: usize = 64;
/// Longest agent-sent sentence (an error, a reason) kept, in characters.
pub const MAX_AGENT_TEXT_CHARS: usize = 1024;

/// Makes agent-supplied text safe to store and to show in a terminal: control characters
/// (ESC and the rest of `char::is_control`) are dropped, so an agent cannot send terminal
/// escape sequences to whoever reads the text, and the length is capped.
pub fn clean_agent_text(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

/// What an agent says about itself when it connects.
pub struct Hello {
    pub device: String,
    pub capacity: EdgeCapacity,
    pub images: Vec<String>,
    pub containers: Vec<EdgeContainer>,
    pub auto_accept: bool,
    pub auto_return: bool,
}

impl AgentHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes that the cloud has every change of `id` as of `at`.
    pub fn note_synced(&self, id: &ContainerId, at: i64) {
        let mut synced = lock(&self.synced_at);
        let entry = synced.entry(id.clone()).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// The recovery point of an edge container at `now`: how many seconds of its work the
    /// cloud may not have. Zero while its agent is connected and reports it synced; else
    /// the time since the cloud last had all of it (`since` when that is not known here,
    /// the end of its move).
    pub fn recovery_point(
        &self,
        owner: &UserName,
        device: Option<&str>,
        id: &ContainerId,
        since: i64,
        now: i64,
    ) -> u64 {
        let synced_now = self
            .agent(owner, device)
            .is_some_and(|a| a.containers().iter().any(|c| c.id == *id && c.synced));
        if synced_now {
            self.note_synced(id, now);
            return 0;
        }
        let last = lock(&self.synced_at).get(id).copied().unwrap_or(since);
        u64::try_from(now - last.max(since)).unwrap_or(0)
    }

    /// Registers a connection; a newer connection of the same device replaces the older,
    /// and other devices of the user stay.
    pub fn register(
        &self,
        user: UserName,
        hello: Hello,
    ) -> (Arc<AgentLink>, mpsc::UnboundedReceiver<ServerMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(AgentLink {
            user: user.clone(),
            device: hello.device,
            connection: self.next.fetch_add(1, Ordering::Relaxed),
            capacity: hello.capacity,
            images: hello.images,
            auto_accept: hello.auto_accept,
            auto_return: hello.auto_return,
            containers: Mutex::new(hello.containers),
            tx,
            pending: Mutex::new(HashMap::new()),
            cut: tokio_util::sync::CancellationToken::new(),
        });
        lock(&self.agents)
            .entry(user)
            .or_default()
            .insert(link.device.clone(), link.clone());
        (link, rx)
    }

    /// Forgets a connection if it is still the current one; its pending requests fail.
    pub fn unregister(&self, link: &AgentLink) -> bool {
        let mut agents = lock(&self.agents);
        let devices = agents.get_mut(&link.user);
        let current = devices.as_ref().is_some_and(|d| {
            d.get(&link.device)
                .is_some_and(|l| l.connection == link.connection)
        });
        if let Some(devices) = devices
            && current
        {
            devices.remove(&link.device);
            if devices.is_empty() {
                agents.remove(&link.user);
            }
        }
        lock(&link.pending).clear();
        current
    }

    /// Ends every agent connection of `user` (a disabled user, revoked tokens); `false`
    /// if none.
    pub fn cut_off(&self, user: &UserName) -> bool {
        let devices = self.devices(user);
        for link in &devices {
            link.cut.cancel();
        }
        !devices.is_empty()
    }

    /// The agent of `user`'s `device`; with no device named, the user's first one (by
    /// name): a container that moved before devices had names is on the only one.
    pub fn agent(&self, user: &UserName, device: Option<&str>) -> Option<Arc<AgentLink>> {
        let agents = lock(&self.agents);
        let devices = agents.get(user)?;
        match device {
            Some(device) => devices.get(device).cloned(),
            None => devices.values().next().cloned(),
        }
    }

    /// Whether any device of `user` is connected.
    pub fn connected(&self, user: &UserName) -> bool {
        lock(&self.agents).contains_key(user)
    }

    /// `user`'s connected devices, by name.
    pub fn devices(&self, user: &UserName) -> Vec<Arc<AgentLink>> {
        lock(&self.agents)
            .get(user)
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn agents(&self) -> Vec<Arc<AgentLink>> {
        lock(&self.agents)
            .values()
            .flat_map(|d| d.values().cloned())
            .collect()
    }

    /// Something for `user` to read, shown by each of their connected agents.
    pub fn notice(&self, user: &UserName, text: String) {
        for agent in self.devices(user) {
            agent.send(ServerMessage::Notice { text: text.clone() });
        }
    }

    /// Something for every connected user to read.
    pub fn notice_all(&self, text: &str) {
        for agent in self.agents() {
            agent.send(ServerMessage::Notice {
                text: text.to_owned(),
            });
        }
    }

    /// Sends a command to the agent of `user`'s `device` (see [`AgentHub::agent`]) and
    /// waits for its reply.
    pub async fn request(
        &self,
        user: &UserName,
        device: Option<&str>,
        command: Command,
        timeout: Duration,
    ) -> Result<Reply, HubError> {
        let link = self
            .agent(user, device)
            .ok_or_else(|| HubError::NotConnected(agent_name(user, device)))?;
        let _in_flight = self.command_in_flight(&link, &command);
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&link.pending).insert(request, tx);
        if !link.send(ServerMessage::Request { request, command }) {
            lock(&link.pending).remove(&request);
            return Err(HubError::Disconnected);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(message))) => Err(HubError::Failed(message)),
            Ok(Err(_)) => Err(HubError::Disconnected),
            Err(_) => {
                lock(&link.pending).remove(&request);
                Err(HubError::Timeout(timeout.as_secs()))
            }
        }
    }

    /// Asks the agent of `user`'s `device` to dial back a channel to `container_id` and
    /// waits (at most 15 s) for its socket.
    pub async fn open_channel(
        &self,
        user: &UserName,
        device: Option<&str>,
        container_id: &ContainerId,
        channel: Channel,
    ) -> Result<WebSocket, HubError> {
        let link = self
            .agent(user, device)
            .ok_or_else(|| HubError::NotConnected(agent_name(user, device)))?;
        let session = crate::auth::random_secret();
        let (tx, rx) = oneshot::channel();
        lock(&self.channel_waiters).insert(session.clone(), (user.clone(), tx));
        let sent = link.send(ServerMessage::OpenChannel {
            session: session.clone(),
            container_id: container_id.clone(),
            channel,
        });
        let result = if sent {
            match tokio::time::timeout(CHANNEL_DIAL_TIMEOUT, rx).await {
                Ok(Ok(socket)) => Ok(socket),
                Ok(Err(_)) => Err(HubError::Disconnected),
                Err(_) => Err(HubError::Timeout(CHANNEL_DIAL_TIMEOUT.as_secs())),
            }
        } else {
            Err(HubError::Disconnected)
        };
        lock(&self.channel_waiters).remove(&session);
        result
    }

    /// Whether `session` is a channel `user`'s agent was asked to open.
    pub fn channel_session_of(&self, session: &str, user: &UserName) -> bool {
        lock(&self.channel_waiters)
            .get(session)
            .is_some_and(|(owner, _)| owner == user)
    }

    /// Hands the agent's socket to the waiting user.
    pub fn deliver_channel(&self, session: &str, socket: WebSocket) {
        if let Some((_, waiter)) = lock(&self.channel_waiters).remove(session) {
            let _ = waiter.send(socket);
        }
    }

    /// A move of `id` started, with the agent of `user`'s `device` (see
    /// [`AgentHub::agent`]) as its edge side. The mover calls this when the move begins;
    /// until then progress reports for `id` are refused.
    pub fn move_started(&self, id: &ContainerId, user: &UserName, device: Option<&str>) {
        let device = match device {
            Some(device) => device.to_owned(),
            None => match self.agent(user, None) {
                Some(link) => link.device.clone(),
                None => return,
            },
        };
        lock(&self.moves).insert(id.clone(), (user.clone(), device));
    }

    /// The move of `id` ended: its progress goes and later reports for it are refused.
    pub fn move_ended(&self, id: &ContainerId) {
        lock(&self.moves).remove(id);
        lock(&self.progress).remove(id);
    }

    /// Marks a move command to `link` as in flight until the guard drops.
    fn command_in_flight(&self, link: &AgentLink, command: &Command) -> Option<InFlight> {
        let moving = matches!(
            command,
            Command::Prepare { .. } | Command::Finalize { .. } | Command::StopForReturn { .. }
        );
        if !moving {
            return None;
        }
        let id = command.container_id().clone();
        lock(&self.commands)
            .entry(id.clone())
            .or_insert_with(|| (link.user.clone(), link.device.clone(), 0))
            .2 += 1;
        Some(InFlight {
            commands: self.commands.clone(),
            id,
        })
    }

    /// Keeps a progress report from `agent` when it names a move in flight whose edge side
    /// is that agent (registered with [`AgentHub::move_started`], or one of the move's
    /// commands awaiting that agent's answer); anything else (made-up ids, another user's
    /// container, a container that is not moving) is dropped without keeping a byte.
    /// Returns whether it was kept.
    pub fn set_progress(&self, agent: &AgentLink, id: &ContainerId, progress: Progress) -> bool {
        let registered = lock(&self.moves)
            .get(id)
            .is_some_and(|(user, device)| *user == agent.user && *device == agent.device);
        let commanded = lock(&self.commands)
            .get(id)
            .is_some_and(|(user, device, _)| *user == agent.user && *device == agent.device);
        if !(registered || commanded) {
            return false;
        }
        let progress = Progress {
            phase: clean_agent_text(&progress.phase, MAX_PHASE_CHARS),
            ..progress
        };
        lock(&self.progress).insert(id.clone(), progress);
        true
    }

    pub fn progress(&self, id: &ContainerId) -> Option<Progress> {
        lock(&self.progress).get(id).cloned()
    }
}

/// A move command awaiting its agent's answer; dropping it ends that.
struct InFlight {
    commands: Arc<Mutex<HashMap<ContainerId, Commanded>>>,
    id: ContainerId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut commands = lock(&self.commands);
        if let Some((_, _, count)) = commands.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                commands.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            device: "laptop".to_owned(),
            capacity: EdgeCapacity {
                cpus: 4.0,
                memory_bytes: 8 << 30,
                free_disk_bytes: 1 << 40,
                architecture: "amd64".to_owned(),
                hostname: "laptop".to_owned(),
            },
            images: Vec::new(),
            containers: Vec::new(),
            auto_accept: false,
            auto_return: false,
        }
    }

    fn user(name: &str) -> UserName {
        UserName::parse(name).unwrap()
    }

    fn id(text: &str) -> ContainerId {
        ContainerId::parse(text).unwrap()
    }

    fn report(phase: &str) -> Progress {
        Progress {
            phase: phase.to_owned(),
            done: 1,
            total: 2,
        }
    }

    #[test]
    fn a_report_for_a_container_that_is_not_moving_is_dropped() {
        let hub = AgentHub::new();
        let (mallory, _rx) = hub.register(user("mallory"), hello());
        for n in 0..1000u64 {
            let made_up = id(&format!("{n:012x}"));
            assert!(!hub.set_progress(&mallory, &made_up, report("pre-copy")));
        }
        assert!(lock(&hub.progress).is_empty());
        assert_eq!(lock(&hub.progress).capacity(), 0, "nothing was allocated");
    }

    #[test]
    fn a_report_for_another_agents_move_is_dropped() {
        let hub = AgentHub::new();
        let (_alice, _a) = hub.register(user("alice"), hello());
        let (mallory, _m) = hub.register(user("mallory"), hello());
        let victim = id("0123456789ab");
        hub.move_started(&victim, &user("alice"), Some("laptop"));
        assert!(!hub.set_progress(&mallory, &victim, report("\u{1b}[2Jpwned")));
        assert_eq!(hub.progress(&victim), None);
        assert_eq!(lock(&hub.progress).capacity(), 0, "nothing was allocated");
    }

    #[test]
    fn a_report_for_the_agents_own_move_is_kept_clean_and_short() {
        let hub = AgentHub::new();
        let (alice, _a) = hub.register(user("alice"), hello());
        let moving = id("0123456789ab");
        hub.move_started(&moving, &user("alice"), Some("laptop"));
        let hostile = format!("pre\u{1b}[31m-copy\r\n\u{7}{}", "x".repeat(10_000));
        assert!(hub.set_progress(&alice, &moving, report(&hostile)));
        let kept = hub.progress(&moving).unwrap();
        assert!(kept.phase.starts_with("pre[31m-copyx"), "{}", kept.phase);
        assert!(
            !kept.phase.chars().any(char::is_control),
            "{:?}",
            kept.phase
        );
        assert_eq!(kept.phase.chars().count(), MAX_PHASE_CHARS);
        assert_eq!((kept.done, kept.total), (1, 2));

        // Once the move ends its progress goes, and later reports are refused again.
        hub.move_ended(&moving);
        assert_eq!(hub.progress(&moving), None);
        assert!(!hub.set_progress(&alice, &moving, report("image")));
        assert_eq!(hub.progress(&moving), None);
    }

    #[tokio::test]
    async fn a_move_command_awaiting_its_agent_admits_that_agents_reports_only() {
        let hub = Arc::new(AgentHub::new());
        let (alice, mut to_alice) = hub.register(user("alice"), hello());
        let (mallory, _m) = hub.register(user("mallory"), hello());
        let moving = id("0123456789ab");
        let waiting = {
            let hub = hub.clone();
            let moving = moving.clone();
            tokio::spawn(async move {
                let command = Command::StopForReturn {
                    container_id: moving,
                    generation: 2,
                };
                hub.request(&user("alice"), None, command, Duration::from_secs(30))
                    .await
            })
        };
        let Some(ServerMessage::Request { request, .. }) = to_alice.recv().await else {
            panic!("alice's agent got no request");
        };
        assert!(!hub.set_progress(&mallory, &moving, report("workspace")));
        assert!(hub.set_progress(&alice, &moving, report("workspace")));
        alice.complete(request, Ok(Reply::Done));
        waiting.await.unwrap().unwrap();
        // Answered: the container is no longer in a command of that agent.
        hub.move_ended(&moving);
        assert!(!hub.set_progress(&alice, &moving, report("workspace")));
        assert!(lock(&hub.commands).is_empty());
    }

    fn on(device: &str) -> Hello {
        Hello {
            device: device.to_owned(),
            ..hello()
        }
    }

    /// A user's laptop and desktop are connected side by side; a reconnection replaces
    /// only its own device, and the older connection going away removes nothing.
    #[test]
    fn each_device_of_a_user_keeps_its_own_connection() {
        let hub = AgentHub::new();
        let alice = user("alice");
        let (laptop, _l) = hub.register(alice.clone(), on("laptop"));
        let (desktop, _d) = hub.register(alice.clone(), on("desktop"));
        let names = |hub: &AgentHub| -> Vec<String> {
            hub.devices(&alice)
                .iter()
                .map(|l| l.device.clone())
                .collect()
        };
        assert_eq!(names(&hub), ["desktop", "laptop"]);
        assert_eq!(
            hub.agent(&alice, Some("laptop")).unwrap().connection,
            laptop.connection
        );
        assert!(hub.agent(&alice, Some("phone")).is_none());
        // No device named: the first by name.
        assert_eq!(hub.agent(&alice, None).unwrap().device, "desktop");

        let (again, _a) = hub.register(alice.clone(), on("laptop"));
        assert_eq!(names(&hub), ["desktop", "laptop"]);
        assert!(
            !hub.unregister(&laptop),
            "the older laptop connection is not current"
        );
        assert_eq!(
            hub.agent(&alice, Some("laptop")).unwrap().connection,
            again.connection
        );
        assert!(hub.unregister(&desktop));
        assert_eq!(names(&hub), ["laptop"]);
        assert!(hub.unregister(&again));
        assert!(!hub.connected(&alice));
    }

    /// Progress for a move to the laptop is the laptop's to report, not the desktop's.
    #[test]
    fn a_report_from_another_device_of_the_same_user_is_dropped() {
        let hub = AgentHub::new();
        let (laptop, _l) = hub.register(user("alice"), on("laptop"));
        let (desktop, _d) = hub.register(user("alice"), on("desktop"));
        let moving = id("0123456789ab");
        hub.move_started(&moving, &user("alice"), Some("laptop"));
        assert!(!hub.set_progress(&desktop, &moving, report("pre-copy")));
        assert!(hub.set_progress(&laptop, &moving, report("pre-copy")));
    }

    /// Cutting a user off ends every device's connection.
    #[test]
    fn cutting_a_user_off_ends_all_their_devices() {
        let hub = AgentHub::new();
        let (laptop, _l) = hub.register(user("alice"), on("laptop"));
        let (desktop, _d) = hub.register(user("alice"), on("desktop"));
        let (bob, _b) = hub.register(user("bob"), on("laptop"));
        assert!(hub.cut_off(&user("alice")));
        assert!(laptop.cut.is_cancelled() && desktop.cut.is_cancelled());
        assert!(!bob.cut.is_cancelled());
        assert!(!hub.cut_off(&user("carol")));
    }

    #[test]
    fn agent_text_loses_control_characters_and_excess_length() {
        assert_eq!(
            clean_agent_text("ok\u{1b}]0;title\u{7} done", 100),
            "ok]0;title done"
        );
        assert_eq!(clean_agent_text("h\u{e9}llo w\u{f6}rld", 5), "h\u{e9}llo");
        assert_eq!(clean_agent_text("\u{9b}2J\u{0}", 10), "2J");
    }
}
