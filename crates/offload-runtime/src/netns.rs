//! Connections into a container's network namespace, for [`crate::ContainerRuntime::connect`].
//!
//! A socket stays in the namespace it was created in, so the runtime enters the
//! container's namespace on a short-lived thread of its own, creates and connects the
//! socket there and hands it back; no other thread of the process ever changes namespace.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// A container's network namespace, opened through its init process.
#[derive(Debug)]
pub struct NetNs {
    pid: u32,
    file: File,
    dev: u64,
    ino: u64,
}

/// Why a connection into a namespace failed.
#[derive(Debug)]
pub enum NsError {
    /// Entering the namespace was refused (the process lacks `CAP_SYS_ADMIN`).
    Enter(io::Error),
    /// The connection itself failed.
    Connect(io::Error),
}

impl NetNs {
    /// Opens the network namespace of the process `pid` (of the host's PID namespace).
    pub fn open(pid: u32) -> io::Result<NetNs> {
        let file = File::open(format!("/proc/{pid}/ns/net"))?;
        let meta = file.metadata()?;
        Ok(NetNs {
            pid,
            file,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the process it was opened through still lives in it. A container that was
    /// stopped or restarted has another init process (or none), so an opened namespace is
    /// used only while this holds; a PID reused by a process elsewhere fails it as well.
    pub fn is_current(&self) -> bool {
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid))
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    /// Connects to `127.0.0.1:port` inside the namespace, within `timeout`.
    pub async fn connect(
        self: Arc<Self>,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, NsError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("offload-netns".to_owned())
            .spawn(move || {
                let _ = tx.send(self.connect_here(port, timeout));
                // The thread ends here, and its namespace with it: nothing else runs on it.
            })
            .map_err(NsError::Enter)?;
        let stream = rx.await.map_err(|_| {
            NsError::Connect(io::Error::other(
                "the namespace thread ended without an answer",
            ))
        })??;
        tokio::net::TcpStream::from_std(stream).map_err(NsError::Connect)
    }

    /// Runs on the dedicated thread: enters the namespace, then connects.
    fn connect_here(&self, port: u16, timeout: Duration) -> Result<TcpStream, NsError> {
        move_into_link_name_space(self.file.as_fd(), Some(LinkNameSpaceType::Network))
            .map_err(|e| NsError::Enter(e.into()))?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&address, timeout).map_err(NsError::Connect)?;
        stream.set_nodelay(true).map_err(NsError::Connect)?;
        stream.set_nonblocking(true).map_err(NsError::Connect)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process in a network namespace of its own (`unshare --net`, util-linux), whose
    /// loopback is brought up and which listens with busybox `nc` on `port`.
    struct Isolated(std::process::Child);

    impl Isolated {
        fn start(port: u16) -> Isolated {
            let script = format!(
                "busybox ip link set lo up && exec busybox nc -l -p {port} -e busybox echo inside"
            );
            let child = std::process::Command::new("unshare")
                .args(["--net", "sh", "-c", &script])
                .spawn()
                .expect("unshare runs (util-linux)");
            Isolated(child)
        }
    }

    impl Drop for Isolated {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn a_connection_is_made_inside_the_other_namespace_not_here() {
        // Here, on this namespace's loopback, the port is taken by someone else.
        let here = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = here.local_addr().unwrap().port();
        let isolated = Isolated::start(port);
        let pid = isolated.0.id();
        // `unshare` moves to the new namespace and execs the shell: wait until it is
        // there, then until nc listens.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let ours = NetNs::open(std::process::id()).unwrap();
        let ns = loop {
            let ns = NetNs::open(pid).unwrap();
            if (ns.dev, ns.ino) != (ours.dev, ours.ino) {
                break Arc::new(ns);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "unshare did not unshare"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stream = loop {
            let ns = ns.clone();
            match ns.connect(port, Duration::from_secs(2)).await {
                Ok(stream) => break stream,
                Err(NsError::Connect(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no connection inside the namespace: {e:?}"),
            }
        };
        use tokio::io::AsyncReadExt;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("the listener inside answers and closes")
            .unwrap();
        assert_eq!(answer.trim(), "inside", "the namespace's listener answered");
        // The listener here never saw a connection.
        here.set_nonblocking(true).unwrap();
        assert!(here.accept().is_err());
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_refused_at_once() {
        let ns = Arc::new(NetNs::open(std::process::id()).unwrap());
        assert!(ns.is_current());
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let started = std::time::Instant::now();
        match ns.connect(port, Duration::from_secs(5)).await {
            Err(NsError::Connect(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_namespace_whose_process_is_gone_is_not_current() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let ns = NetNs::open(child.id()).unwrap();
        assert!(ns.is_current());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!ns.is_current());
    }
}
