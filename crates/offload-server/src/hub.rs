//! The agents connected to this server: one control link per user, requests with
//! replies, progress reports of the moves in flight, and the rendezvous of exec relays.

use std::collections::HashMap;
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
    #[error("{0}'s agent is not connected; start `offload agent` on the edge machine")]
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

/// One connected agent.
pub struct AgentLink {
    pub user: UserName,
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

/// Every connected agent, by user.
#[derive(Default)]
pub struct AgentHub {
    agents: Mutex<HashMap<UserName, Arc<AgentLink>>>,
    /// Channels an agent was asked to dial back, by session: the agent they were asked
    /// of and the user waiting for the socket.
    channel_waiters: Mutex<HashMap<String, (UserName, oneshot::Sender<WebSocket>)>>,
    /// The moves in flight, each with the user whose agent is their edge side: only
    /// that agent may report progress for them.
    moves: Mutex<HashMap<ContainerId, UserName>>,
    /// Move commands (prepare, finalize, stop for return) sent and not yet answered, by
    /// container: their agent reports progress while it carries them out.
    commands: Arc<Mutex<HashMap<ContainerId, (UserName, usize)>>>,
    progress: Mutex<HashMap<ContainerId, Progress>>,
    next: AtomicU64,
    /// When the cloud last had every change of each edge container (Unix seconds): the
    /// agent said so, or a push of it was applied.
    synced_at: Mutex<HashMap<ContainerId, i64>>,
}

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
    pub fn recovery_point(&self, owner: &UserName, id: &ContainerId, since: i64, now: i64) -> u64 {
        let synced_now = self
            .agent(owner)
            .is_some_and(|a| a.containers().iter().any(|c| c.id == *id && c.synced));
        if synced_now {
            self.note_synced(id, now);
            return 0;
        }
        let last = lock(&self.synced_at).get(id).copied().unwrap_or(since);
        u64::try_from(now - last.max(since)).unwrap_or(0)
    }

    /// Registers a connection; a newer connection of the same user replaces the older.
    pub fn register(
        &self,
        user: UserName,
        hello: Hello,
    ) -> (Arc<AgentLink>, mpsc::UnboundedReceiver<ServerMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(AgentLink {
            user: user.clone(),
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
        lock(&self.agents).insert(user, link.clone());
        (link, rx)
    }

    /// Forgets a connection if it is still the current one; its pending requests fail.
    pub fn unregister(&self, link: &AgentLink) -> bool {
        let mut agents = lock(&self.agents);
        let current = agents
            .get(&link.user)
            .is_some_and(|l| l.connection == link.connection);
        if current {
            agents.remove(&link.user);
        }
        lock(&link.pending).clear();
        current
    }

    /// Ends `user`'s agent connection (a disabled user, revoked tokens); `false` if none.
    pub fn cut_off(&self, user: &UserName) -> bool {
        match self.agent(user) {
            Some(link) => {
                link.cut.cancel();
                true
            }
            None => false,
        }
    }

    pub fn agent(&self, user: &UserName) -> Option<Arc<AgentLink>> {
        lock(&self.agents).get(user).cloned()
    }

    pub fn agents(&self) -> Vec<Arc<AgentLink>> {
        lock(&self.agents).values().cloned().collect()
    }

    /// Something for `user` to read, shown by their agent if it is connected.
    pub fn notice(&self, user: &UserName, text: String) {
        if let Some(agent) = self.agent(user) {
            agent.send(ServerMessage::Notice { text });
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

    /// Sends a command to `user`'s agent and waits for its reply.
    pub async fn request(
        &self,
        user: &UserName,
        command: Command,
        timeout: Duration,
    ) -> Result<Reply, HubError> {
        let link = self
            .agent(user)
            .ok_or_else(|| HubError::NotConnected(user.to_string()))?;
        let _in_flight = self.command_in_flight(user, &command);
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

    /// Asks `user`'s agent to dial back a channel to `container_id` and waits (at most
    /// 15 s) for its socket.
    pub async fn open_channel(
        &self,
        user: &UserName,
        container_id: &ContainerId,
        channel: Channel,
    ) -> Result<WebSocket, HubError> {
        let link = self
            .agent(user)
            .ok_or_else(|| HubError::NotConnected(user.to_string()))?;
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

    /// A move of `id` started, with `user`'s agent as its edge side. The mover calls this
    /// when the move begins; until then progress reports for `id` are refused.
    pub fn move_started(&self, id: &ContainerId, user: &UserName) {
        lock(&self.moves).insert(id.clone(), user.clone());
    }

    /// The move of `id` ended: its progress goes and later reports for it are refused.
    pub fn move_ended(&self, id: &ContainerId) {
        lock(&self.moves).remove(id);
        lock(&self.progress).remove(id);
    }

    /// Marks a move command to `user`'s agent as in flight until the guard drops.
    fn command_in_flight(&self, user: &UserName, command: &Command) -> Option<InFlight> {
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
            .or_insert_with(|| (user.clone(), 0))
            .1 += 1;
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
        let registered = lock(&self.moves).get(id) == Some(&agent.user);
        let commanded = lock(&self.commands)
            .get(id)
            .is_some_and(|(user, _)| user == &agent.user);
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
    commands: Arc<Mutex<HashMap<ContainerId, (UserName, usize)>>>,
    id: ContainerId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut commands = lock(&self.commands);
        if let Some((_, count)) = commands.get_mut(&self.id) {
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
        hub.move_started(&victim, &user("alice"));
        assert!(!hub.set_progress(&mallory, &victim, report("\u{1b}[2Jpwned")));
        assert_eq!(hub.progress(&victim), None);
        assert_eq!(lock(&hub.progress).capacity(), 0, "nothing was allocated");
    }

    #[test]
    fn a_report_for_the_agents_own_move_is_kept_clean_and_short() {
        let hub = AgentHub::new();
        let (alice, _a) = hub.register(user("alice"), hello());
        let moving = id("0123456789ab");
        hub.move_started(&moving, &user("alice"));
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
                hub.request(&user("alice"), command, Duration::from_secs(30))
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
