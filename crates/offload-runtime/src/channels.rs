//! The channels open to each container (exec sessions, port connections, and any other
//! kind that registers), so that a move can tell each of them before it cuts them.
//!
//! Whoever carries a channel registers it with [`OpenChannels::open`] and keeps the
//! returned [`OpenChannel`] for as long as the channel lives; dropping it unregisters.
//! [`OpenChannels::notify`] queues a sentence on every channel of a container, which its
//! relay sends to the user as that channel's notice frame ([`crate::relay::notice_frame`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use offload_core::ContainerId;
use offload_core::agent::Channel;
use tokio::sync::mpsc;

#[derive(Default)]
struct Board {
    next: u64,
    open: HashMap<ContainerId, Vec<Entry>>,
}

struct Entry {
    key: u64,
    channel: Channel,
    notices: mpsc::UnboundedSender<String>,
}

/// Every open channel, by container.
#[derive(Clone, Default)]
pub struct OpenChannels {
    board: Arc<Mutex<Board>>,
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    board.lock().unwrap_or_else(|p| p.into_inner())
}

impl OpenChannels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a channel to `id` until the returned handle drops.
    pub fn open(&self, id: &ContainerId, channel: Channel) -> OpenChannel {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut board = lock(&self.board);
        board.next += 1;
        let key = board.next;
        board.open.entry(id.clone()).or_default().push(Entry {
            key,
            channel,
            notices: tx,
        });
        OpenChannel {
            board: self.board.clone(),
            id: id.clone(),
            key,
            channel,
            notices: rx,
        }
    }

    /// Queues a notice on every channel open to `id`, worded by `text` for each kind;
    /// returns how many channels were told.
    pub fn notify(&self, id: &ContainerId, text: impl Fn(Channel) -> String) -> usize {
        let board = lock(&self.board);
        let Some(entries) = board.open.get(id) else {
            return 0;
        };
        entries
            .iter()
            .filter(|e| e.notices.send(text(e.channel)).is_ok())
            .count()
    }

    /// The channels open to `id` now.
    pub fn open_to(&self, id: &ContainerId) -> Vec<Channel> {
        lock(&self.board)
            .open
            .get(id)
            .map(|entries| entries.iter().map(|e| e.channel).collect())
            .unwrap_or_default()
    }
}

/// One registered channel; dropping it unregisters the channel.
pub struct OpenChannel {
    board: Arc<Mutex<Board>>,
    id: ContainerId,
    key: u64,
    pub channel: Channel,
    /// The notices queued for this channel, for its relay to send.
    pub notices: mpsc::UnboundedReceiver<String>,
}

impl OpenChannel {
    /// The notices as a stream, for a relay that takes one.
    pub fn notice_stream(&mut self) -> impl futures::Stream<Item = String> + Unpin + '_ {
        futures::stream::poll_fn(move |cx| self.notices.poll_recv(cx))
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        let mut board = lock(&self.board);
        if let Some(entries) = board.open.get_mut(&self.id) {
            entries.retain(|e| e.key != self.key);
            if entries.is_empty() {
                board.open.remove(&self.id);
            }
        }
    }
}

/// The sentence a channel to the container `name` gets before a move to `whereto`
/// ("your machine", "the cloud") cuts it.
pub fn move_notice(channel: Channel, name: &str, whereto: &str) -> String {
    match channel {
        Channel::Exec => format!(
            "{name} moves to {whereto}: this session ends in a moment; the same `ssh {name}.offload` (or `offload shell {name}`) reconnects"
        ),
        Channel::Port { port } => format!(
            "{name} moves to {whereto}: connections to port {port} end in a moment; new ones reach it there once it runs"
        ),
        Channel::Sftp => format!(
            "{name} moves to {whereto}: this file session ends in a moment; copy again once it runs there"
        ),
        Channel::Logs { .. } => {
            format!("{name} moves to {whereto}: its output goes on here once it runs there")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> ContainerId {
        ContainerId::parse(text).unwrap()
    }

    #[test]
    fn a_notice_reaches_every_channel_of_its_container_and_only_those() {
        let open = OpenChannels::new();
        let (a, b) = (id("0123456789ab"), id("ba9876543210"));
        let mut exec = open.open(&a, Channel::Exec);
        let mut port = open.open(&a, Channel::Port { port: 8080 });
        let mut other = open.open(&b, Channel::Exec);
        let told = open.notify(&a, |c| format!("{} ends", c.name()));
        assert_eq!(told, 2);
        assert_eq!(exec.notices.try_recv().unwrap(), "exec ends");
        assert_eq!(port.notices.try_recv().unwrap(), "port ends");
        assert!(other.notices.try_recv().is_err());
        assert_eq!(open.open_to(&b), vec![Channel::Exec]);
    }

    #[test]
    fn the_notices_say_where_the_container_goes_and_what_reconnects() {
        let exec = move_notice(Channel::Exec, "box", "your machine");
        assert_eq!(
            exec,
            "box moves to your machine: this session ends in a moment; the same `ssh box.offload` (or `offload shell box`) reconnects"
        );
        let port = move_notice(Channel::Port { port: 8080 }, "box", "the cloud");
        assert!(
            port.starts_with("box moves to the cloud: connections to port 8080 end"),
            "{port}"
        );
    }

    #[test]
    fn a_dropped_channel_is_no_longer_told() {
        let open = OpenChannels::new();
        let a = id("0123456789ab");
        let exec = open.open(&a, Channel::Exec);
        let port = open.open(&a, Channel::Port { port: 22 });
        drop(exec);
        assert_eq!(open.open_to(&a), vec![Channel::Port { port: 22 }]);
        drop(port);
        assert!(open.open_to(&a).is_empty());
        assert_eq!(open.notify(&a, |_| "gone".to_owned()), 0);
        assert!(lock(&open.board).open.is_empty(), "nothing is left behind");
    }
}
