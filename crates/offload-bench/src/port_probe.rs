//! `port-probe`: the HTTP client of `bench/ports.sh`. It measures one address the same
//! way whether that is a port forward or a direct connection into the container's network
//! namespace (the script runs it under `nsenter --net` for the direct path), so the two
//! figures differ only by the path.
//!
//!   port-probe latency ADDR PATH COUNT   COUNT sequential GETs, each on a new connection
//!                                        (as curl does); prints p50 and p99 in µs
//!   port-probe throughput ADDR PATH RUNS GETs PATH RUNS times; prints the median MB/s
//!
//! Output is one JSON object on stdout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One GET of `path`: the body's length. Anything but a 200 is an error.
fn get(address: SocketAddr, path: &str, sink: &mut [u8]) -> Result<u64> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(30))
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let mut total = 0u64;
    loop {
        let n = stream.read(sink)?;
        if n == 0 {
            break;
        }
        if head.len() < 16 {
            head.extend_from_slice(&sink[..n.min(16)]);
        }
        total += n as u64;
    }
    let status = String::from_utf8_lossy(&head);
    if !(status.starts_with("HTTP/1.") && status.get(9..12) == Some("200")) {
        bail!("GET {path} through {address} did not answer 200: {status:?}");
    }
    Ok(total)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn run(args: &[String]) -> Result<()> {
    let [mode, address, path, count] = args else {
        bail!("usage: port-probe latency|throughput ADDR PATH COUNT");
    };
    let address: SocketAddr = address.parse().context("ADDR is ip:port")?;
    let count: usize = count.parse().context("COUNT is a number")?;
    let mut sink = vec![0u8; 1 << 20];
    match mode.as_str() {
        "latency" => {
            // A few untimed requests first: the first connections pay for lazy setup.
            for _ in 0..10 {
                get(address, path, &mut sink)?;
            }
            let mut times = Vec::with_capacity(count);
            for _ in 0..count {
                let started = Instant::now();
                get(address, path, &mut sink)?;
                times.push(started.elapsed());
            }
            times.sort();
            println!(
                "{{\"p50_us\": {}, \"p99_us\": {}, \"count\": {count}}}",
                percentile(&times, 0.50).as_micros(),
                percentile(&times, 0.99).as_micros()
            );
        }
        "throughput" => {
            let mut rates = Vec::with_capacity(count);
            let mut bytes = 0;
            for _ in 0..count {
                let started = Instant::now();
                bytes = get(address, path, &mut sink)?;
                rates.push(bytes as f64 / started.elapsed().as_secs_f64() / 1e6);
            }
            rates.sort_by(f64::total_cmp);
            println!(
                "{{\"mb_per_s\": {:.1}, \"bytes\": {bytes}, \"runs\": {count}}}",
                rates[rates.len() / 2]
            );
        }
        other => bail!("unknown mode {other:?}: latency or throughput"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("port-probe: {e:#}");
            ExitCode::from(1)
        }
    }
}
