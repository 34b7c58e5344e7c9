//! offload's side: one sync between two local trees, run as the protocol runs between two
//! hosts. The sender and the receiver are two threads that share nothing but a pair of
//! channels carrying byte bodies, and every byte put on a channel is counted: that count
//! is what the wire would carry (message bodies; HTTP framing is not modelled).
//!
//! The receiver drives, as the agent does:
//!
//! 1. asks for the sender's manifest, naming the generation it last acknowledged; it gets
//!    the delta since that manifest as JSON, or the whole manifest as JSON when it has none,
//!    while it rescans its own tree (with its previous scan, so unchanged files are not
//!    read);
//! 2. computes the chunks it lacks against its own tree ([`TreeChunks`]) and its chunk
//!    cache ([`ChunkStore`]);
//! 3. asks for them in batches (ids as JSON hex, [`BATCH_WINDOW`] batches in flight); the
//!    sender reads them out of its tree and answers with [`encode_chunks`] (LZ4);
//! 4. decodes and verifies each batch, applies the delta with fsync from
//!    `Chain(own tree, cache, received chunks)`, and acknowledges.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use offload_sync::{
    ApplyOptions, Chain, ChunkId, ChunkSource, ChunkStore, Delta, EntryKind, Limits, Manifest,
    MemoryChunks, ScanOptions, TreeChunks, apply, decode_chunks, diff, encode_chunks, scan,
};
use serde_json::json;

/// Most raw chunk bytes the receiver asks for in one request.
pub const BATCH_BYTES: u64 = 32 << 20;
/// Most chunks the receiver asks for in one request.
pub const BATCH_CHUNKS: usize = 4096;
/// Chunk requests the receiver keeps in flight, so the sender reads and encodes the next
/// batch while the receiver decodes the last.
pub const BATCH_WINDOW: usize = 2;

/// The generation the sender's previous manifest carries in this simulation.
const ACKED_GENERATION: u64 = 1;

/// What the sending side holds: its tree, its previous scan (for an incremental rescan)
/// and the manifest the receiver last acknowledged, if any.
pub struct SenderSide<'a> {
    pub root: &'a Path,
    pub previous: Option<&'a Manifest>,
    pub acked: Option<&'a Manifest>,
}

/// What the receiving side holds: its tree, its previous scan of it, whether it has
/// acknowledged the sender's previous manifest, and its chunk cache.
pub struct ReceiverSide<'a> {
    pub root: &'a Path,
    pub previous: Option<&'a Manifest>,
    pub has_acked: bool,
    pub cache: &'a Path,
}

/// Receiver to sender.
enum Request {
    Manifest(Vec<u8>),
    Chunks(Vec<u8>),
    Ack(Vec<u8>),
}

/// Sender to receiver.
enum Reply {
    Delta(Vec<u8>),
    Manifest(Vec<u8>),
    Chunks(Vec<u8>),
}

/// One offload sync, measured.
#[derive(Clone, Debug, Default)]
pub struct OffloadRun {
    /// Bytes from sender to receiver: the manifest or delta JSON, then chunk batches.
    pub to_receiver: u64,
    /// Bytes from receiver to sender: the manifest request, chunk id lists, the ack.
    pub to_sender: u64,
    /// Of `to_receiver`, the manifest or delta JSON alone.
    pub manifest_bytes: u64,
    /// Requests the receiver made (each a round trip).
    pub requests: u64,
    pub chunks_fetched: u64,
    pub sender_scan: Duration,
    pub sender_hashed_bytes: u64,
    pub receiver_scan: Duration,
    /// From the start until the delta (or manifest) was parsed and diffed.
    pub delta_at: Duration,
    /// From the start until the last chunk batch was decoded.
    pub chunks_at: Duration,
    pub apply: Duration,
    pub wall: Duration,
}

/// Syncs the sender's tree into the receiver's and measures it.
pub fn sync(sender: &SenderSide<'_>, receiver: &ReceiverSide<'_>) -> Result<OffloadRun> {
    let start = Instant::now();
    let (req_tx, req_rx) = sync_channel::<Request>(BATCH_WINDOW + 1);
    let (reply_tx, reply_rx) = sync_channel::<Reply>(BATCH_WINDOW);
    let (received, served) = thread::scope(|s| {
        let serving = s.spawn(move || serve(sender, req_rx, reply_tx));
        let received = receive(receiver, start, req_tx, reply_rx);
        let served = serving
            .join()
            .map_err(|_| anyhow!("the sender thread panicked"));
        (received, served)
    });
    // A sender failure explains a receiver failure ("sender hung up"), so it goes first.
    let served = served??;
    let mut run = received?;
    run.wall = start.elapsed();
    run.to_receiver = served.sent;
    run.sender_scan = served.scan;
    run.sender_hashed_bytes = served.hashed_bytes;
    Ok(run)
}

#[derive(Default)]
struct Served {
    sent: u64,
    scan: Duration,
    hashed_bytes: u64,
}

/// The sender: answers requests until the receiver acknowledges or hangs up.
fn serve(
    side: &SenderSide<'_>,
    requests: Receiver<Request>,
    replies: SyncSender<Reply>,
) -> Result<Served> {
    let mut served = Served::default();
    let mut tree: Option<(Manifest, TreeChunks)> = None;
    let send = |reply: Reply, served: &mut Served| -> Result<()> {
        let (Reply::Delta(b) | Reply::Manifest(b) | Reply::Chunks(b)) = &reply;
        served.sent += b.len() as u64;
        replies
            .send(reply)
            .map_err(|_| anyhow!("the receiver hung up"))
    };
    for request in requests {
        match request {
            Request::Manifest(body) => {
                let ask: serde_json::Value =
                    serde_json::from_slice(&body).context("bad manifest request")?;
                let since = ask.get("since").and_then(serde_json::Value::as_u64);
                let t = Instant::now();
                let scanned = scan(side.root, &ScanOptions::default(), side.previous)
                    .context("sender scan failed")?;
                served.scan = t.elapsed();
                served.hashed_bytes = scanned.stats.hashed_bytes;
                let manifest = scanned.manifest;
                let reply = match (since, side.acked) {
                    (Some(ACKED_GENERATION), Some(acked)) => {
                        Reply::Delta(serde_json::to_vec(&diff(acked, &manifest))?)
                    }
                    _ => Reply::Manifest(manifest.to_json()?),
                };
                let chunks = TreeChunks::new(side.root, &manifest)?;
                tree = Some((manifest, chunks));
                send(reply, &mut served)?;
            }
            Request::Chunks(body) => {
                let ids: Vec<ChunkId> =
                    serde_json::from_slice(&body).context("bad chunk request")?;
                let Some((_, chunks)) = &tree else {
                    bail!("chunks asked for before the manifest");
                };
                let bytes: Vec<(ChunkId, Vec<u8>)> = ids
                    .iter()
                    .map(|id| chunks.get(id).map(|b| (*id, b)))
                    .collect::<Result<_, _>>()
                    .context("sender could not read a chunk")?;
                let batch = encode_chunks(bytes.iter().map(|(id, b)| (*id, &b[..])))?;
                send(Reply::Chunks(batch), &mut served)?;
            }
            Request::Ack(_) => break,
        }
    }
    Ok(served)
}

/// The receiver: fetches the delta and the chunks it lacks, applies, acknowledges.
fn receive(
    side: &ReceiverSide<'_>,
    start: Instant,
    requests: SyncSender<Request>,
    replies: Receiver<Reply>,
) -> Result<OffloadRun> {
    let limits = Limits::default();
    let mut run = OffloadRun::default();
    let ask = |request: Request, run: &mut OffloadRun| -> Result<()> {
        let (Request::Manifest(b) | Request::Chunks(b) | Request::Ack(b)) = &request;
        run.to_sender += b.len() as u64;
        run.requests += 1;
        requests
            .send(request)
            .map_err(|_| anyhow!("the sender hung up"))
    };
    let hung_up = |_| anyhow!("the sender hung up");

    let since = if side.has_acked {
        json!({ "since": ACKED_GENERATION })
    } else {
        json!({})
    };
    ask(Request::Manifest(serde_json::to_vec(&since)?), &mut run)?;

    // Rescanning its own tree overlaps with the sender's scan, as on two hosts.
    let t = Instant::now();
    let own = scan(side.root, &ScanOptions::default(), side.previous)
        .context("receiver scan failed")?
        .manifest;
    run.receiver_scan = t.elapsed();

    let delta = match replies.recv().map_err(hung_up)? {
        Reply::Delta(body) => {
            run.manifest_bytes = body.len() as u64;
            let delta: Delta = serde_json::from_slice(&body).context("bad delta")?;
            delta.validate(&limits)?;
            delta
        }
        Reply::Manifest(body) => {
            run.manifest_bytes = body.len() as u64;
            diff(&own, &Manifest::from_json(&body, &limits)?)
        }
        Reply::Chunks(_) => bail!("chunks arrived before the manifest"),
    };
    run.delta_at = start.elapsed();

    let local = TreeChunks::new(side.root, &own)?;
    let cache = ChunkStore::open(side.cache)?;
    let needed = delta.needed_chunks(|id| local.contains(id) || cache.contains(id));
    run.chunks_fetched = needed.len() as u64;
    let batches = batches(&delta, &needed);

    let mut received = MemoryChunks::new();
    let mut next = batches.iter();
    let mut in_flight = 0;
    for batch in next.by_ref().take(BATCH_WINDOW) {
        ask(Request::Chunks(serde_json::to_vec(batch)?), &mut run)?;
        in_flight += 1;
    }
    while in_flight > 0 {
        let Reply::Chunks(body) = replies.recv().map_err(hung_up)? else {
            bail!("expected a chunk batch");
        };
        in_flight -= 1;
        if let Some(batch) = next.next() {
            ask(Request::Chunks(serde_json::to_vec(batch)?), &mut run)?;
            in_flight += 1;
        }
        for (id, bytes) in decode_chunks(&body, &limits)? {
            received.insert(id, bytes)?;
        }
    }
    run.chunks_at = start.elapsed();

    let t = Instant::now();
    let opts = ApplyOptions {
        fsync: true,
        ..ApplyOptions::default()
    };
    apply(
        side.root,
        &delta,
        &Chain::new(vec![&local, &cache, &received]),
        &opts,
    )
    .context("apply failed")?;
    run.apply = t.elapsed();
    ask(
        Request::Ack(serde_json::to_vec(&json!({ "ack": ACKED_GENERATION + 1 }))?),
        &mut run,
    )?;
    Ok(run)
}

/// Splits the needed chunks into requests of at most [`BATCH_BYTES`] and [`BATCH_CHUNKS`].
fn batches(delta: &Delta, needed: &[ChunkId]) -> Vec<Vec<ChunkId>> {
    let lens: HashMap<ChunkId, u32> = delta
        .upserts
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => Some(chunks),
            _ => None,
        })
        .flatten()
        .map(|c| (c.id, c.len))
        .collect();
    let mut out: Vec<Vec<ChunkId>> = Vec::new();
    let mut bytes = 0u64;
    for id in needed {
        let len = u64::from(lens.get(id).copied().unwrap_or(0));
        match out.last_mut() {
            Some(batch) if batch.len() < BATCH_CHUNKS && bytes + len <= BATCH_BYTES => {
                batch.push(*id);
                bytes += len;
            }
            _ => {
                out.push(vec![*id]);
                bytes = len;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree;

    fn scan_of(root: &Path) -> Result<Manifest> {
        Ok(scan(root, &ScanOptions::default(), None)?.manifest)
    }

    /// A fresh sync and then an incremental one both leave the receiver equal to the
    /// sender, and every counted byte is accounted for by a message.
    #[test]
    fn syncs_fresh_then_incrementally() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let (src, dst, cache) = (
            tmp.path().join("src"),
            tmp.path().join("dst"),
            tmp.path().join("cache"),
        );
        tree::big_file_tree(&src, 3 << 20)?;
        let files = tree::small_files(&src, 50, 3)?;
        std::fs::create_dir(&dst)?;

        let fresh = sync(
            &SenderSide {
                root: &src,
                previous: None,
                acked: None,
            },
            &ReceiverSide {
                root: &dst,
                previous: None,
                has_acked: false,
                cache: &cache,
            },
        )?;
        let src_manifest = scan_of(&src)?;
        assert_eq!(scan_of(&dst)?, src_manifest);
        let total = files + (3 << 20);
        assert!(fresh.to_receiver > total, "random data crosses whole");
        assert!(fresh.manifest_bytes > 0 && fresh.to_sender > 0);

        let dst_manifest = scan_of(&dst)?;
        let src_previous = scan_of(&src)?;
        tree::edit_one_byte(&src)?;
        let edit = sync(
            &SenderSide {
                root: &src,
                previous: Some(&src_previous),
                acked: Some(&src_previous),
            },
            &ReceiverSide {
                root: &dst,
                previous: Some(&dst_manifest),
                has_acked: true,
                cache: &cache,
            },
        )?;
        assert_eq!(scan_of(&dst)?, scan_of(&src)?);
        assert!((1..=3).contains(&edit.chunks_fetched), "{edit:?}");
        assert!(edit.to_receiver < 1 << 20, "{edit:?}");
        assert_eq!(
            edit.sender_hashed_bytes,
            3 << 20,
            "only the edited file is read"
        );
        Ok(())
    }

    #[test]
    fn batches_respect_both_bounds() {
        let ids: Vec<ChunkId> = (0..10u8).map(|i| ChunkId::of(&[i])).collect();
        let entry = |chunks: Vec<offload_sync::ChunkRef>| offload_sync::Entry {
            path: offload_sync::RelPath::new("f").expect("valid path"),
            kind: EntryKind::File {
                size: chunks.iter().map(|c| u64::from(c.len)).sum(),
                chunks,
            },
            mode: 0o644,
            mtime_ns: 0,
        };
        let len = (BATCH_BYTES / 3) as u32;
        let delta = Delta {
            upserts: vec![entry(
                ids.iter()
                    .map(|&id| offload_sync::ChunkRef { id, len })
                    .collect(),
            )],
            deletes: Vec::new(),
        };
        let split = batches(&delta, &ids);
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        assert_eq!(split.concat(), ids);
    }
}
