//! swarm-up: starts a Docker Swarm of private engines in network namespaces on this
//! machine (offload-testkit's, as the end-to-end tests use), prints how to reach it, and
//! removes it again when its standard input closes. `bench/swarm.sh` holds one open for
//! the length of a run.
//!
//! Output, one line each: `manager HOST`, then `node NAME ID HOST` per node, then `ready`.
//!
//!   swarm-up [NODES] [IMAGE_TAG]      # 3 nodes, offload-bench/busybox:latest

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let nodes = match args.next().map(|n| n.parse::<usize>()) {
        None => 3,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("swarm-up: the node count must be a number: {e}");
            return ExitCode::from(2);
        }
    };
    let tag = args
        .next()
        .unwrap_or_else(|| "offload-bench/busybox:latest".to_owned());
    let swarm = match offload_testkit::Swarm::start("bench", nodes, &tag) {
        Ok(swarm) => swarm,
        Err(e) => {
            eprintln!("swarm-up: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut lines = format!("manager {}\n", swarm.manager().host());
    for node in swarm.nodes() {
        lines.push_str(&format!(
            "node {} {} {}\n",
            node.name(),
            node.node_id(),
            node.host()
        ));
    }
    lines.push_str("ready\n");
    if out
        .write_all(lines.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(out);
    // Held until the caller closes our standard input (or dies); then the swarm goes.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(swarm);
    ExitCode::SUCCESS
}
