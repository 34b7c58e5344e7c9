//! A Docker Swarm of several private engines on one machine, each in a network namespace.
//!
//! Every node is an [`Engine`] whose `dockerd` runs in a network namespace of its own,
//! entered with `nsenter --net` (`ip netns exec` would remount `/sys` and hide the cgroup
//! mounts). The nodes' `eth0`s are veth pairs whose other ends sit on a bridge in one more
//! namespace, so all swarm traffic (raft, gossip, the dispatcher) stays inside namespaces:
//! nothing is routed through the host's own network namespace, where traffic to private
//! ranges is blocked. The engines' API sockets are files, so the host reaches them anyway.
//!
//! Namespaces are named `ofs-<pid>-<n>-<node>`; a swarm started by a test process that has
//! died (and whose engines its watchdogs stopped) is swept away by the next [`Swarm::start`].

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::command;
use crate::engine::{Engine, EngineOptions};
use crate::process;
use crate::wait::wait_for;

/// The node label tests use to tell nodes apart (every node reports the same hostname).
pub const NODE_LABEL: &str = "offload.node";

const NETNS_DIR: &str = "/run/netns";
const NETNS_PREFIX: &str = "ofs-";
/// The nodes' subnet: inside the namespaces only, outside Swarm's default address pool
/// (10.0.0.0/8) for overlay networks.
const SUBNET: [u8; 3] = [192, 168, 240];
const IP_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(120);

static SWARMS: AtomicU32 = AtomicU32::new(0);

/// One engine of a [`Swarm`].
pub struct SwarmNode {
    name: String,
    engine: Engine,
    node_id: String,
    addr: Ipv4Addr,
    netns: String,
    /// This node's veth end on the bridge, in the bridge's namespace.
    port: String,
}

impl SwarmNode {
    /// The name given to the node; also its `offload.node` label.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's own engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// `unix:///…/docker.sock` of the node's own engine.
    pub fn host(&self) -> &str {
        self.engine.host()
    }

    /// The Swarm node ID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's address on the swarm's bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The network namespace the node's `dockerd` runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }
}

/// A running swarm: node 0 is the manager, the others joined as workers.
///
/// Dropping it removes the services, stops every `dockerd` (workers first), and deletes the
/// namespaces, which takes the veth pairs and the bridge with them.
pub struct Swarm {
    name: String,
    /// In start order; dropped workers first.
    nodes: Vec<SwarmNode>,
    bridge_netns: String,
    namespaces: Vec<String>,
}

impl Swarm {
    /// Starts `nodes` engines named `<name>-0`, `<name>-1`, … in namespaces of their own,
    /// initialises the swarm on the first, joins the others, waits until the manager sees
    /// all of them ready, labels each node `offload.node=<its name>` and imports the busybox
    /// image as `busybox_tag` on every node.
    pub fn start(name: &str, nodes: usize, busybox_tag: &str) -> anyhow::Result<Swarm> {
        if nodes == 0 || nodes > 200 {
            bail!("a test swarm has from 1 to 200 nodes, not {nodes}");
        }
        sweep_stale_namespaces();
        let seq = SWARMS.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NETNS_PREFIX}{}-{seq}", std::process::id());
        let mut swarm = Swarm {
            name: name.to_owned(),
            nodes: Vec::new(),
            bridge_netns: format!("{base}-br"),
            namespaces: Vec::new(),
        };
        swarm
            .build(&base, nodes, busybox_tag)
            .with_context(|| format!("failed to start test swarm {name:?}"))?;
        Ok(swarm)
    }

    fn build(&mut self, base: &str, count: usize, busybox_tag: &str) -> anyhow::Result<()> {
        let bridge = self.bridge_netns.clone();
        self.add_netns(&bridge)?;
        ip(&["-n", &bridge, "link", "set", "lo", "up"])?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 0..count {
            let netns = format!("{base}-{i}");
            self.add_netns(&netns)?;
            let port = format!("p{i}");
            let index = u8::try_from(i + 1).context("too many nodes")?;
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], index);
            ip(&[
                "link", "add", "eth0", "netns", &netns, "type", "veth", "peer", "name", &port,
                "netns", &bridge,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &port, "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;

            let node_name = format!("{}-{i}", self.name);
            let options = EngineOptions {
                netns: Some(Path::new(NETNS_DIR).join(&netns)),
                // Engines before API 1.46 drop a service's NoNewPrivileges; the daemon
                // default is what an operator sets there too (see the README).
                extra_args: vec!["--no-new-privileges".to_owned()],
                ..Default::default()
            };
            let engine = Engine::start_with(&node_name, &options)?;
            self.nodes.push(SwarmNode {
                name: node_name,
                engine,
                node_id: String::new(),
                addr,
                netns,
                port,
            });
        }

        let manager_addr = self.nodes[0].addr.to_string();
        self.nodes[0]
            .engine
            .docker_output([
                "swarm",
                "init",
                "--advertise-addr",
                &manager_addr,
                "--listen-addr",
                &format!("{manager_addr}:2377"),
            ])
            .context("docker swarm init failed")?;
        let token = self.nodes[0]
            .engine
            .docker_output(["swarm", "join-token", "--quiet", "worker"])?
            .trim()
            .to_owned();
        for node in &self.nodes[1..] {
            let own = node.addr.to_string();
            node.engine
                .docker_output([
                    "swarm",
                    "join",
                    "--token",
                    &token,
                    "--advertise-addr",
                    &own,
                    "--listen-addr",
                    &format!("{own}:2377"),
                    &format!("{manager_addr}:2377"),
                ])
                .with_context(|| format!("node {} could not join the swarm", node.name))?;
        }
        for node in &mut self.nodes {
            let id = node
                .engine
                .docker_output(["info", "--format", "{{.Swarm.NodeID}}"])?
                .trim()
                .to_owned();
            if id.is_empty() {
                bail!("node {} reports no swarm node ID", node.name);
            }
            node.node_id = id;
        }
        self.wait_ready(count)?;
        for i in 0..self.nodes.len() {
            let (id, name) = (self.nodes[i].node_id.clone(), self.nodes[i].name.clone());
            self.set_label(&id, NODE_LABEL, &name)?;
            self.nodes[i].engine.import_busybox(busybox_tag)?;
        }
        Ok(())
    }

    fn wait_ready(&self, count: usize) -> anyhow::Result<()> {
        let manager = &self.nodes[0].engine;
        let mut last = String::new();
        wait_for(
            READY_TIMEOUT,
            Duration::from_millis(250),
            || match manager.docker_output([
                "node",
                "ls",
                "--format",
                "{{.Status}} {{.Availability}}",
            ]) {
                Ok(out) => {
                    let ready = out.lines().filter(|l| l.trim() == "Ready Active").count();
                    last = out;
                    (ready == count).then_some(())
                }
                Err(e) => {
                    last = format!("{e:#}");
                    None
                }
            },
        )
        .with_context(|| format!("the swarm did not have {count} ready nodes; last saw: {last}"))
    }

    fn add_netns(&mut self, netns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", netns])?;
        self.namespaces.push(netns.to_owned());
        Ok(())
    }

    /// The swarm's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The manager node (node 0).
    pub fn manager(&self) -> &SwarmNode {
        &self.nodes[0]
    }

    /// All nodes, manager first.
    pub fn nodes(&self) -> &[SwarmNode] {
        &self.nodes
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&SwarmNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node with Swarm ID `id`.
    pub fn node_by_id(&self, id: &str) -> Option<&SwarmNode> {
        self.nodes.iter().find(|n| n.node_id == id)
    }

    /// Sets label `key=value` on node `node_id` through the manager.
    pub fn set_label(&self, node_id: &str, key: &str, value: &str) -> anyhow::Result<()> {
        self.manager()
            .engine
            .docker_output([
                "node",
                "update",
                "--label-add",
                &format!("{key}={value}"),
                node_id,
            ])
            .map(|_| ())
    }

    /// Runs `docker <args>` against the manager.
    pub fn docker_output<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.manager().engine.docker_output(args)
    }

    /// Cuts node `name` off the bridge (its link down), as a network partition would.
    pub fn cut_off(&self, name: &str) -> anyhow::Result<()> {
        self.set_port(name, "down")
    }

    /// Puts a node cut off by [`Swarm::cut_off`] back on the bridge.
    pub fn reconnect(&self, name: &str) -> anyhow::Result<()> {
        self.set_port(name, "up")
    }

    /// Freezes node `name`'s `dockerd` (SIGSTOP), as a daemon that hangs: its engine's API
    /// and its swarm agent fall silent, so the manager soon sees the node down, while its
    /// containers (under containerd and their shims, which go on) keep running. Calls to
    /// its engine hang until [`Swarm::thaw`]; dropping the swarm thaws it first.
    pub fn freeze(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, rustix::process::Signal::STOP)
    }

    /// Lets a node frozen by [`Swarm::freeze`] run again.
    pub fn thaw(&self, name: &str) -> anyhow::Result<()> {
        self.signal(name, rustix::process::Signal::CONT)
    }

    fn signal(&self, name: &str, signal: rustix::process::Signal) -> anyhow::Result<()> {
        let node = self
            .node(name)
            .with_context(|| format!("the swarm has no node {name:?}"))?;
        let pid = i32::try_from(node.engine.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .with_context(|| format!("node {name} has no dockerd PID"))?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("cannot signal the dockerd of node {name}"))
    }

    fn set_port(&self, name: &str, state: &str) -> anyhow::Result<()> {
        let node = self
            .node(name)
            .with_context(|| format!("the swarm has no node {name:?}"))?;
        ip(&["-n", &self.bridge_netns, "link", "set", &node.port, state])
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // A frozen engine could not stop; thawing one that runs does nothing.
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            let _ = self.thaw(&name);
        }
        if let Some(manager) = self.nodes.first()
            && let Ok(out) = manager.engine.docker_output(["service", "ls", "--quiet"])
        {
            let ids: Vec<&str> = out.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["service", "rm"];
                args.extend(ids);
                let _ = manager.engine.docker_output(args);
            }
        }
        // Workers first, so the manager does not spend the teardown rescheduling.
        while let Some(node) = self.nodes.pop() {
            drop(node);
        }
        for netns in self.namespaces.drain(..).rev() {
            let _ = ip(&["netns", "del", &netns]);
        }
    }
}

impl fmt::Debug for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swarm")
            .field("name", &self.name)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(ip_program());
    cmd.args(args);
    command::run_ok(&mut cmd, None, IP_CALL_TIMEOUT).map(|_| ())
}

fn ip_program() -> PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("ip"))
}

/// Deletes namespaces left by test processes that died without dropping their swarm.
fn sweep_stale_namespaces() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = stale_owner(&name) else {
            continue;
        };
        if !process::is_alive(pid) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The PID in a namespace name `ofs-<pid>-…`.
fn stale_owner(name: &str) -> Option<u32> {
    name.strip_prefix(NETNS_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_carry_their_owner() {
        assert_eq!(stale_owner("ofs-1234-0-br"), Some(1234));
        assert_eq!(stale_owner("ofs-1234-2-1"), Some(1234));
        assert_eq!(stale_owner("other-1234"), None);
        assert_eq!(stale_owner("ofs-x-1"), None);
    }
}
