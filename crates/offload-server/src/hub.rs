//! The agents connected to this server: one control link per user, requests with
//! replies, progress reports, and the rendezvous of exec relays.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::WebSocket;
use offload_core::agent::{Command, EdgeCapacity, EdgeContainer, Reply, ServerMessage};
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
    exec_waiters: Mutex<HashMap<String, (UserName, oneshot::Sender<WebSocket>)>>,
    progress: Mutex<HashMap<ContainerId, Progress>>,
    /// Moves in flight, with the owner whose agent takes part.
    moves: Mutex<HashMap<ContainerId, UserName>>,
    next: AtomicU64,
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

    pub fn agent(&self, user: &UserName) -> Option<Arc<AgentLink>> {
        lock(&self.agents).get(user).cloned()
    }

    pub fn agents(&self) -> Vec<Arc<AgentLink>> {
        lock(&self.agents).values().cloned().collect()
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

    /// Asks `user`'s agent to dial back an exec relay and waits for its socket.
    pub async fn open_exec(
        &self,
        user: &UserName,
        container_id: &ContainerId,
    ) -> Result<WebSocket, HubError> {
        let link = self
            .agent(user)
            .ok_or_else(|| HubError::NotConnected(user.to_string()))?;
        let session = crate::auth::random_secret();
        let (tx, rx) = oneshot::channel();
        lock(&self.exec_waiters).insert(session.clone(), (user.clone(), tx));
        let sent = link.send(ServerMessage::OpenExec {
            session: session.clone(),
            container_id: container_id.to_string(),
        });
        let result = if sent {
            match tokio::time::timeout(Duration::from_secs(15), rx).await {
                Ok(Ok(socket)) => Ok(socket),
                Ok(Err(_)) => Err(HubError::Disconnected),
                Err(_) => Err(HubError::Timeout(15)),
            }
        } else {
            Err(HubError::Disconnected)
        };
        lock(&self.exec_waiters).remove(&session);
        result
    }

    /// Whether `session` is an exec relay `user`'s agent was asked to open.
    pub fn exec_session_of(&self, session: &str, user: &UserName) -> bool {
        lock(&self.exec_waiters)
            .get(session)
            .is_some_and(|(owner, _)| owner == user)
    }

    /// Hands the agent's relay socket to the waiting user.
    pub fn deliver_exec(&self, session: &str, socket: WebSocket) {
        if let Some((_, waiter)) = lock(&self.exec_waiters).remove(session) {
            let _ = waiter.send(socket);
        }
    }

    pub fn set_progress(&self, id: ContainerId, progress: Progress) {
        lock(&self.progress).insert(id, progress);
    }

    pub fn progress(&self, id: &ContainerId) -> Option<Progress> {
        lock(&self.progress).get(id).cloned()
    }

    /// A move of `id` started; `owner`'s agent takes part in it.
    pub fn begin_move(&self, id: &ContainerId, owner: &UserName) {
        lock(&self.moves).insert(id.clone(), owner.clone());
    }

    /// The move of `id` ended: its progress is gone.
    pub fn end_move(&self, id: &ContainerId) {
        lock(&self.moves).remove(id);
        lock(&self.progress).remove(id);
    }
}
