//! `sync-vs-rsync`: offload's workspace sync next to rsync (speaking its protocol over a
//! pipe) and, for a fresh tree, a plain `cp -a`, all in one run; prints markdown tables of
//! wire bytes in both directions and wall times, with ratios.
//!
//! Run it through `bench/sync.sh [--quick] [--runs N] [--work-dir DIR]`, which builds it in
//! release mode. Results and the machine they came from are recorded in
//! `docs/benchmarks.md`.

mod offload;
mod product;
mod report;
mod rsync;
mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use offload_sync::{Manifest, ScanOptions, scan};

use offload::{OffloadRun, ReceiverSide, SenderSide};
use product::Product;
use rsync::RsyncRun;

const USAGE: &str =
    "usage: sync-vs-rsync [--quick] [--runs N] [--only N] [--work-dir DIR] [--rsh PATH]

  --quick         small sizes (10 MiB file, 500 small files, 72 MiB fresh tree)
  --runs N        runs per scenario; the median wall time is reported (default 3, 1 with --quick)
  --only N        run scenario N (1-4) alone
  --work-dir DIR  where the trees are made, on a real disk (default: the temp dir)
  --rsh PATH      rsync's remote shell that runs the server end locally
                  (default: bench/rsh-local of this source tree)";

/// How big each scenario is.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    big_file: usize,
    small_files: usize,
    /// Every this-many-th small file is edited (100 is 1%).
    edit_every: usize,
    fresh_big_files: usize,
    fresh_big_size: usize,
    fresh_small_files: usize,
}

const FULL: Sizes = Sizes {
    big_file: 100 << 20,
    small_files: 2000,
    edit_every: 100,
    fresh_big_files: 10,
    fresh_big_size: 100 << 20,
    fresh_small_files: 1000,
};

const QUICK: Sizes = Sizes {
    big_file: 10 << 20,
    small_files: 500,
    edit_every: 100,
    fresh_big_files: 4,
    fresh_big_size: 16 << 20,
    fresh_small_files: 200,
};

struct Args {
    sizes: Sizes,
    quick: bool,
    runs: usize,
    only: Option<usize>,
    work_dir: PathBuf,
    rsh: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut quick = false;
    let mut runs = None;
    let mut only = None;
    let mut work_dir = std::env::temp_dir();
    let mut rsh = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/rsh-local");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--runs" => {
                let n = value("--runs")?;
                runs = Some(
                    n.parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(format!("--runs wants a positive number, not {n:?}"))?,
                );
            }
            "--only" => {
                let n = value("--only")?;
                only = Some(
                    n.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=4).contains(n))
                        .ok_or(format!("--only wants a scenario from 1 to 4, not {n:?}"))?,
                );
            }
            "--work-dir" => work_dir = PathBuf::from(value("--work-dir")?),
            "--rsh" => rsh = PathBuf::from(value("--rsh")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        sizes: if quick { QUICK } else { FULL },
        quick,
        runs: runs.unwrap_or(if quick { 1 } else { 3 }),
        only,
        work_dir,
        rsh,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("sync-vs-rsync: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sync-vs-rsync: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    OneByteEdit,
    InsertAtStart,
    SmallFiles,
    FreshTree,
}

/// All runs of one scenario.
struct Measured {
    title: String,
    kind: Kind,
    file_bytes: u64,
    offload: Vec<OffloadRun>,
    /// The same pull through the server's HTTPS endpoints and the agent's client.
    product: Vec<OffloadRun>,
    rsync: Vec<RsyncRun>,
    copy: Vec<Duration>,
}

fn bench(args: &Args) -> Result<()> {
    ensure!(
        args.rsh.is_file(),
        "remote shell {:?} not found; pass --rsh PATH (bench/rsh-local)",
        args.rsh
    );
    let rsh = args
        .rsh
        .canonicalize()
        .with_context(|| format!("failed to resolve {:?}", args.rsh))?;
    let work = tempfile::Builder::new()
        .prefix("offload-bench-")
        .tempdir_in(&args.work_dir)
        .with_context(|| format!("failed to make a work dir in {:?}", args.work_dir))?;
    let fs_type = check_disk(work.path(), &args.sizes)?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let product = Product::start(work.path()).context("cannot start the benchmark's server")?;

    let s = args.sizes;
    let scenarios = [
        (
            Kind::OneByteEdit,
            format!(
                "1. 1-byte edit in a {} file",
                report::bytes(s.big_file as u64)
            ),
        ),
        (
            Kind::InsertAtStart,
            format!(
                "2. 1 KiB insert at the start of a {} file",
                report::bytes(s.big_file as u64)
            ),
        ),
        (
            Kind::SmallFiles,
            format!(
                "3. {} of {} small files (1–16 KiB) edited",
                s.small_files / s.edit_every,
                s.small_files
            ),
        ),
        (
            Kind::FreshTree,
            format!(
                "4. fresh tree ({}×{} + {} small files) to an empty dir",
                s.fresh_big_files,
                report::bytes(s.fresh_big_size as u64),
                s.fresh_small_files
            ),
        ),
    ];
    let started = Instant::now();
    let mut results = Vec::new();
    for (i, (kind, title)) in scenarios.into_iter().enumerate() {
        if args.only.is_some_and(|n| n != i + 1) {
            continue;
        }
        let dir = work.path().join(format!("s{}", i + 1));
        let measured = run_scenario(kind, title, &s, args.runs, &rsh, &dir, &product)?;
        tree::remove(&dir)?;
        results.push(measured);
    }
    eprintln!("done in {}", report::secs(started.elapsed()));
    print_report(args, &fs_type, &results);
    Ok(())
}

/// Refuses a work dir without room for the largest scenario (source, three copies, slack)
/// and returns its filesystem type, warning if it is memory-backed.
fn check_disk(dir: &Path, sizes: &Sizes) -> Result<String> {
    let out = tree::run(
        Command::new("findmnt")
            .args(["-no", "FSTYPE", "-T"])
            .arg(dir),
    )
    .or_else(|_| tree::run(Command::new("stat").args(["-f", "-c", "%T"]).arg(dir)))?;
    let fs_type = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if fs_type == "tmpfs" || fs_type == "ramfs" {
        eprintln!("warning: {dir:?} is {fs_type}; fsync and cp times will not reflect a disk");
    }
    let out = tree::run(Command::new("df").args(["--output=avail", "-B1"]).arg(dir))?;
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("cannot read free space from df")?;
    let fresh =
        (sizes.fresh_big_files * sizes.fresh_big_size + sizes.fresh_small_files * 16384) as u64;
    let needed = 7 * fresh;
    ensure!(
        avail >= needed,
        "{dir:?} has {} free, the benchmark needs about {}; pass --work-dir",
        report::bytes(avail),
        report::bytes(needed)
    );
    Ok(fs_type)
}

fn scan_tree(root: &Path, previous: Option<&Manifest>) -> Result<Manifest> {
    Ok(scan(root, &ScanOptions::default(), previous)
        .with_context(|| format!("failed to scan {root:?}"))?
        .manifest)
}

fn run_scenario(
    kind: Kind,
    title: String,
    s: &Sizes,
    runs: usize,
    rsh: &Path,
    dir: &Path,
    product: &Product,
) -> Result<Measured> {
    eprintln!("{title}: preparing");
    let base = dir.join("base");
    let file_bytes = match kind {
        Kind::OneByteEdit | Kind::InsertAtStart => {
            tree::big_file_tree(&base, s.big_file)?;
            s.big_file as u64
        }
        Kind::SmallFiles => tree::small_files(&base, s.small_files, 0x5A11)?,
        Kind::FreshTree => tree::fresh_tree(
            &base,
            s.fresh_big_files,
            s.fresh_big_size,
            s.fresh_small_files,
        )?,
    };
    tree::settle_dirs(&base)?;
    let mut measured = Measured {
        title,
        kind,
        file_bytes,
        offload: Vec::new(),
        product: Vec::new(),
        rsync: Vec::new(),
        copy: Vec::new(),
    };
    let (rsync_dst, offload_dst, copy_dst) =
        (dir.join("rsync"), dir.join("offload"), dir.join("cp"));
    for run in 0..runs {
        eprintln!("{}: run {}/{runs}", measured.title, run + 1);
        // Both destinations start from the same state: the scenario's base (an exact copy,
        // mtimes included, so rsync's quick check and offload's rescan both see unchanged
        // files as unchanged) or, for the fresh tree, nothing.
        let (src, sender_previous, receiver_previous) = if kind == Kind::FreshTree {
            tree::empty_dir(&rsync_dst)?;
            tree::empty_dir(&offload_dst)?;
            tree::remove(&copy_dst)?;
            (base.clone(), None, scan_tree(&offload_dst, None)?)
        } else {
            let src = dir.join("src");
            for d in [&src, &rsync_dst, &offload_dst] {
                tree::remove(d)?;
                tree::copy_tree(&base, d)?;
            }
            let sender_previous = scan_tree(&src, None)?;
            let receiver_previous = scan_tree(&offload_dst, None)?;
            ensure!(
                receiver_previous == sender_previous,
                "the receiver's starting tree differs from the sender's"
            );
            match kind {
                Kind::OneByteEdit => tree::edit_one_byte(&src)?,
                Kind::InsertAtStart => tree::insert_at_start(&src)?,
                _ => {
                    tree::edit_small_files(&src, s.small_files, s.edit_every)?;
                }
            }
            (src, Some(sender_previous), receiver_previous)
        };

        let sender = SenderSide {
            root: &src,
            previous: sender_previous.as_ref(),
        };
        let receiver = ReceiverSide {
            root: &offload_dst,
            previous: Some(&receiver_previous),
            base: sender_previous.as_ref(),
        };
        // Alternate who goes first, so neither always meets a warmer or colder cache.
        let run_rsync = |m: &mut Measured| -> Result<()> {
            tree::flush_all()?;
            m.rsync.push(rsync::transfer(rsh, &src, &rsync_dst)?);
            if std::env::var_os("DBG").is_some() {
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "stat -c '%n %y' {0}/big {1}/big {1}/big/* ; ls -la {1}/big",
                        src.display(),
                        rsync_dst.display()
                    ))
                    .status();
            }
            Ok(())
        };
        let run_offload = |m: &mut Measured| -> Result<()> {
            tree::flush_all()?;
            m.offload.push(offload::sync(&sender, &receiver)?);
            Ok(())
        };
        if run % 2 == 0 {
            run_rsync(&mut measured)?;
            run_offload(&mut measured)?;
        } else {
            run_offload(&mut measured)?;
            run_rsync(&mut measured)?;
        }
        measured
            .product
            .push(product_run(kind, s, &base, &dir.join("product"), product)?);
        if kind == Kind::FreshTree {
            tree::flush_all()?;
            let t = Instant::now();
            tree::copy_tree(&src, &copy_dst)?;
            tree::flush_all()?;
            measured.copy.push(t.elapsed());
        }

        let want = scan_tree(&src, None)?;
        let mut dsts = vec![("rsync", &rsync_dst), ("offload", &offload_dst)];
        if kind == Kind::FreshTree {
            dsts.push(("cp", &copy_dst));
        }
        for (tool, dst) in dsts {
            let got = scan_tree(dst, None)?;
            if got != want {
                let first = want
                    .entries
                    .iter()
                    .zip(&got.entries)
                    .find(|(w, g)| w != g)
                    .map(|(w, g)| format!("first difference: {w:?} vs {g:?}"))
                    .unwrap_or_else(|| {
                        format!("{} vs {} entries", want.entries.len(), got.entries.len())
                    });
                bail!("{tool} left {dst:?} different from the source {src:?}; {first}");
            }
        }
    }
    Ok(measured)
}

/// One run of a scenario through the product path: the server's workspace becomes the
/// scenario's base; for an edit, the receiver holds the base too and has pulled once
/// (untimed, as the agent's pre-copy has), then the server's copy is edited and the timed
/// pull brings the edit.
fn product_run(
    kind: Kind,
    s: &Sizes,
    base: &Path,
    dst: &Path,
    product: &Product,
) -> Result<OffloadRun> {
    let ws = product.workspace();
    tree::remove(ws)?;
    tree::copy_tree(base, ws)?;
    let previous = if kind == Kind::FreshTree {
        tree::empty_dir(dst)?;
        None
    } else {
        tree::remove(dst)?;
        tree::copy_tree(base, dst)?;
        let (_, manifest) = product.pull(dst, None)?;
        match kind {
            Kind::OneByteEdit => tree::edit_one_byte(ws)?,
            Kind::InsertAtStart => tree::insert_at_start(ws)?,
            _ => {
                tree::edit_small_files(ws, s.small_files, s.edit_every)?;
            }
        }
        Some(manifest)
    };
    tree::flush_all()?;
    let (run, _) = product.pull(dst, previous.as_ref())?;
    ensure!(
        scan_tree(dst, None)? == scan_tree(ws, None)?,
        "the pull through the server left {dst:?} different from the server's copy"
    );
    Ok(run)
}

/// The run with the median wall time.
fn median_by<T: Clone>(runs: &[T], wall: impl Fn(&T) -> Duration) -> Option<T> {
    let mut sorted = runs.to_vec();
    sorted.sort_by_key(|r| wall(r));
    sorted.get(sorted.len() / 2).cloned()
}

fn print_report(args: &Args, fs_type: &str, results: &[Measured]) {
    println!("## offload sync vs rsync\n");
    println!(
        "Sizes: {}; {} run(s) per scenario, median wall time shown; trees in {} ({fs_type}).\n",
        if args.quick { "--quick" } else { "full" },
        args.runs,
        args.work_dir.display()
    );

    let mut main_rows = Vec::new();
    let mut phase_rows = Vec::new();
    let mut product_rows = Vec::new();
    let mut bulk = None;
    for m in results {
        let (Some(o), Some(r)) = (
            median_by(&m.offload, |o| o.wall),
            median_by(&m.rsync, |r| r.wall),
        ) else {
            continue;
        };
        let (o_total, r_total) = (o.to_receiver + o.to_sender, r.to_receiver + r.to_sender);
        main_rows.push(vec![
            m.title.clone(),
            report::bytes(o.to_receiver),
            report::bytes(o.to_sender),
            report::bytes(r.to_receiver),
            report::bytes(r.to_sender),
            report::ratio(o_total as f64, r_total as f64),
            report::secs(o.wall),
            report::secs(r.wall),
            report::ratio(o.wall.as_secs_f64(), r.wall.as_secs_f64()),
        ]);
        phase_rows.push(vec![
            m.title.clone(),
            report::bytes(o.manifest_bytes),
            format!("{} / {}", o.chunks_fetched, o.requests.saturating_sub(1)),
            format!(
                "{} ({} read)",
                report::secs(o.sender_scan),
                report::bytes(o.sender_hashed_bytes)
            ),
            report::secs(o.receiver_scan),
            report::secs(o.delta_at),
            report::secs(o.chunks_at),
            report::secs(o.applied_at),
            report::secs(r.rsync),
        ]);
        let p = median_by(&m.product, |p| p.wall);
        if let Some(p) = &p {
            product_rows.push(vec![
                m.title.clone(),
                report::secs(o.wall),
                report::secs(p.wall),
                report::ratio(p.wall.as_secs_f64(), o.wall.as_secs_f64()),
                report::bytes(p.to_receiver),
                report::bytes(p.to_sender),
                format!("{}", p.requests),
            ]);
        }
        if m.kind == Kind::FreshTree
            && let Some(copy) = median_by(&m.copy, |d| *d)
        {
            bulk = Some((m.file_bytes, copy, o.wall, p.map(|p| p.wall), r.wall));
        }
    }
    print!(
        "{}",
        report::table(
            &[
                "Scenario",
                "offload ↓",
                "offload ↑",
                "rsync ↓",
                "rsync ↑",
                "bytes offload÷rsync",
                "offload time",
                "rsync time",
                "time offload÷rsync",
            ],
            &main_rows,
        )
    );
    println!(
        "\n↓ sender to receiver, ↑ receiver to sender. The bytes ratio is over both \
         directions; a ratio below 1 favours offload. Times are wall clock until the data is \
         durable: offload fsyncs in its apply, rsync and cp are followed by `sync`.\n"
    );

    println!("### In process and through the server (the product path)\n");
    print!(
        "{}",
        report::table(
            &[
                "Scenario",
                "offload in process",
                "offload through the server",
                "server ÷ in process",
                "server ↓",
                "server ↑",
                "requests",
            ],
            &product_rows,
        )
    );
    println!(
        "\nThe same sync session both ways: in process over `session::InProcess`, and \
         through an offload server in this process (TLS, HTTP/2, its workspace endpoints, a \
         fake engine) with the agent's HTTPS client, on loopback. Bytes are message bodies.\n"
    );

    if let Some((file_bytes, copy, offload, product, rsync)) = bulk {
        println!(
            "### Bulk transfer (scenario 4, {})\n",
            report::bytes(file_bytes)
        );
        let row = |tool: &str, d: Duration| {
            vec![
                tool.to_owned(),
                report::secs(d),
                report::throughput(file_bytes, d),
                format!("{:.0}%", 100.0 * copy.as_secs_f64() / d.as_secs_f64()),
            ]
        };
        print!(
            "{}",
            report::table(
                &["Tool", "wall time", "throughput", "% of cp -a + sync"],
                &[
                    row("cp -a + sync", copy),
                    row("offload in process", offload),
                    row("offload through the server", product.unwrap_or_default()),
                    row("rsync + sync", rsync),
                ],
            )
        );
        if let Some(product) = product {
            println!(
                "\nThrough the server, offload's bulk throughput is {:.2}× the in-process one.",
                offload.as_secs_f64() / product.as_secs_f64()
            );
        }
        println!();
    }

    println!("### Where the bytes and time go (median run)\n");
    print!(
        "{}",
        report::table(
            &[
                "Scenario",
                "manifest update",
                "chunks / requests",
                "sender scan",
                "receiver scan",
                "delta ready at",
                "chunks in at",
                "durable at",
                "rsync alone, no sync",
            ],
            &phase_rows,
        )
    );
}
