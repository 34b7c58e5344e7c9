//! Rough throughput of scan, rescan, chunk encoding and apply for one large file, next to
//! `cp`; the basis for the later comparison with rsync.
//!
//! `cargo run --release -p offload-sync --example sync_bench -- [SIZE_MB] [WORK_DIR]`

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use offload_sync::{
    ApplyOptions, ChunkSource, Manifest, ScanOptions, TreeChunks, apply, diff, encode_chunks, scan,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let size_mb: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let work = match args.next() {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let (src, dst, copy) = (
        work.path().join("src"),
        work.path().join("dst"),
        work.path().join("cp"),
    );
    for d in [&src, &dst, &copy] {
        std::fs::create_dir(d)?;
    }
    let data = noise(size_mb << 20);
    std::fs::write(src.join("big.bin"), &data)?;
    // A file modified in the last seconds is always re-read (its mtime is "racy").
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(src.join("big.bin"))?
        .set_modified(hour_ago)?;
    let mb = size_mb as f64;
    let rate = |label: &str, t: Instant| {
        let s = t.elapsed().as_secs_f64();
        println!("{label:<34} {s:>7.3} s  {:>8.1} MiB/s", mb / s);
    };

    let t = Instant::now();
    let first = scan(&src, &ScanOptions::default(), None)?;
    rate("scan (chunk + hash)", t);
    let t = Instant::now();
    let again = scan(&src, &ScanOptions::default(), Some(&first.manifest))?;
    println!(
        "{:<34} {:>7.3} s  ({} bytes read)",
        "rescan unchanged",
        t.elapsed().as_secs_f64(),
        again.stats.hashed_bytes
    );

    let delta = diff(&Manifest::empty(), &first.manifest);
    let tree = TreeChunks::new(&src, &first.manifest)?;
    let t = Instant::now();
    let ids = delta.needed_chunks(|_| false);
    let mut wire_len = 0;
    for batch in ids.chunks(256) {
        let chunks: Vec<_> = batch
            .iter()
            .map(|id| tree.get(id).map(|b| (*id, b)))
            .collect::<Result<_, _>>()?;
        wire_len += encode_chunks(chunks.iter().map(|(id, b)| (*id, &b[..])))?.len();
    }
    rate("read + encode chunks (lz4)", t);
    println!(
        "{:<34} {wire_len} bytes for {} chunks",
        "  wire size",
        ids.len()
    );

    let t = Instant::now();
    apply(&dst, &delta, &tree, &ApplyOptions::default())?;
    rate("apply from tree (fsync)", t);

    let t = Instant::now();
    let status = Command::new("cp")
        .arg(src.join("big.bin"))
        .arg(&copy)
        .status()?;
    let sync = Command::new("sync").arg(copy.join("big.bin")).status()?;
    if status.success() && sync.success() {
        rate("cp + sync (reference)", t);
    }
    check_same(&src.join("big.bin"), &dst.join("big.bin"))?;
    Ok(())
}

fn noise(len: usize) -> Vec<u8> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn check_same(a: &Path, b: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if std::fs::read(a)? != std::fs::read(b)? {
        return Err("copies differ".into());
    }
    Ok(())
}
