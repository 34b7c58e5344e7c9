//! offload's side: one sync between two local trees, run as the protocol runs between two
//! hosts. The sender and the receiver are two threads that share nothing but a pair of
//! channels carrying byte bodies, and every byte put on a channel is counted: that count
//! is what the wire would carry (message bodies; HTTP framing is not modelled).
//!
//! The receiver drives, as the agent does, with the messages of
//! [`offload_sync::protocol`]:
//!
//! 1. asks for the sender's manifest, naming the digest of the one it last received (its
//!    base); it gets an [`encode_update`]: the binary delta from that base, or the whole
//!    binary manifest when it names none. Meanwhile it rescans its own tree (with its
//!    previous scan, so unchanged files are not read);
//! 2. computes the chunks its own tree ([`TreeChunks`]) lacks with [`wanted_chunks`],
//!    which gives a chunk that replaces old bytes of the same file those bytes as a basis
//!    to patch against;
//! 3. asks for them in batches ([`encode_request`]: ids and basis signatures,
//!    [`BATCH_WINDOW`] batches in flight); the sender reads them out of its tree and
//!    answers with [`serve_request`] (raw, LZ4 or a patch);
//! 4. decodes and verifies each batch ([`decode_reply`]) and hands the chunks to an apply
//!    that runs beside the transfer from `Chain(own tree, incoming chunks)`
//!    ([`Incoming`]), writing each file once its chunks are in, with fsync; then
//!    acknowledges.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use offload_sync::protocol::{
    Wanted, decode_reply, decode_update, encode_request, encode_update, fetch_batches,
    serve_request, wanted_chunks,
};
use offload_sync::{
    ApplyOptions, Chain, ChunkSource, Incoming, Limits, Manifest, ScanOptions, TreeChunks, apply,
    diff, scan,
};

/// Most raw chunk bytes the receiver asks for in one request.
pub const BATCH_BYTES: u64 = 32 << 20;
/// Most chunks the receiver asks for in one request.
pub const BATCH_CHUNKS: usize = 4096;
/// Chunk requests the receiver keeps in flight, so the sender reads and encodes the next
/// batch while the receiver decodes the last.
pub const BATCH_WINDOW: usize = 2;

/// Old bytes the receiver reads to patch against, at most, in one sync.
pub const BASIS_BUDGET: usize = 64 << 20;
/// Received bytes held for the apply before the receiver waits for it to catch up.
pub const INCOMING_CAP: usize = 128 << 20;

/// What the sending side holds: its tree, its previous scan (for an incremental rescan)
/// and the manifest the receiver last acknowledged, if any.
pub struct SenderSide<'a> {
    pub root: &'a Path,
    pub previous: Option<&'a Manifest>,
    pub acked: Option<&'a Manifest>,
}

/// What the receiving side holds: its tree, its previous scan of it, the sender's manifest
/// it last received and acknowledged (its base).
pub struct ReceiverSide<'a> {
    pub root: &'a Path,
    pub previous: Option<&'a Manifest>,
    pub base: Option<&'a Manifest>,
}

/// Receiver to sender.
enum Request {
    Manifest(Vec<u8>),
    Chunks(Vec<u8>),
    Ack(Vec<u8>),
}

/// Sender to receiver.
enum Reply {
    Manifest(Vec<u8>),
    Chunks(Vec<u8>),
}

/// One offload sync, measured.
#[derive(Clone, Debug, Default)]
pub struct OffloadRun {
    /// Bytes from sender to receiver: the manifest update, then chunk batches.
    pub to_receiver: u64,
    /// Bytes from receiver to sender: the manifest request, chunk requests, the ack.
    pub to_sender: u64,
    /// Of `to_receiver`, the manifest update alone.
    pub manifest_bytes: u64,
    /// Of the chunks fetched, those asked for with a basis to patch against.
    pub chunks_patched: u64,
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
    /// From the start until the apply (which runs beside the transfer) was durable.
    pub applied_at: Duration,
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
    let limits = Limits::default();
    let mut served = Served::default();
    let mut tree: Option<(Manifest, TreeChunks)> = None;
    let send = |reply: Reply, served: &mut Served| -> Result<()> {
        let (Reply::Manifest(b) | Reply::Chunks(b)) = &reply;
        served.sent += b.len() as u64;
        replies
            .send(reply)
            .map_err(|_| anyhow!("the receiver hung up"))
    };
    for request in requests {
        match request {
            Request::Manifest(base) => {
                let t = Instant::now();
                let scanned = scan(side.root, &ScanOptions::default(), side.previous)
                    .context("sender scan failed")?;
                served.scan = t.elapsed();
                served.hashed_bytes = scanned.stats.hashed_bytes;
                let manifest = scanned.manifest;
                let base = side
                    .acked
                    .filter(|acked| acked.digest()[..] == base[..] && !base.is_empty());
                let reply = Reply::Manifest(encode_update(&manifest, base));
                let chunks = TreeChunks::new(side.root, &manifest)?;
                tree = Some((manifest, chunks));
                send(reply, &mut served)?;
            }
            Request::Chunks(body) => {
                let Some((_, chunks)) = &tree else {
                    bail!("chunks asked for before the manifest");
                };
                let batch = serve_request(&body, chunks, &limits)
                    .context("sender could not serve a chunk request")?;
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

    let base = side.base.map(|b| b.digest().to_vec()).unwrap_or_default();
    ask(Request::Manifest(base), &mut run)?;

    // Rescanning its own tree overlaps with the sender's scan, as on two hosts.
    let t = Instant::now();
    let own = scan(side.root, &ScanOptions::default(), side.previous)
        .context("receiver scan failed")?
        .manifest;
    run.receiver_scan = t.elapsed();

    let remote = match replies.recv().map_err(hung_up)? {
        Reply::Manifest(body) => {
            run.manifest_bytes = body.len() as u64;
            decode_update(&body, side.base, &limits).context("bad manifest update")?
        }
        Reply::Chunks(_) => bail!("chunks arrived before the manifest"),
    };
    let delta = diff(&own, &remote);
    run.delta_at = start.elapsed();

    let local = TreeChunks::new(side.root, &own)?;
    let wanted = wanted_chunks(&delta, &own, |id| local.contains(id), &local, BASIS_BUDGET);
    run.chunks_fetched = wanted.len() as u64;
    run.chunks_patched = wanted.iter().filter(|w| w.basis.is_some()).count() as u64;
    let batches: Vec<Vec<Wanted>> = fetch_batches(wanted, BATCH_BYTES, BATCH_CHUNKS);

    // Apply runs beside the transfer: it writes each file as soon as its chunks are in.
    let incoming = Incoming::new(&delta, batches.iter().flatten().map(|w| w.id), INCOMING_CAP);
    let opts = ApplyOptions {
        fsync: true,
        ..ApplyOptions::default()
    };
    let applied = thread::scope(|s| -> Result<()> {
        let applying = s.spawn(|| {
            let result = apply(
                side.root,
                &delta,
                &Chain::new(vec![&local, &incoming]),
                &opts,
            );
            incoming.close(Some("the apply ended".to_owned()));
            result
        });
        let fetched = (|| -> Result<()> {
            let mut next = batches.iter();
            let mut in_flight = std::collections::VecDeque::new();
            for batch in next.by_ref().take(BATCH_WINDOW) {
                ask(Request::Chunks(encode_request(batch)), &mut run)?;
                in_flight.push_back(batch);
            }
            while let Some(batch) = in_flight.pop_front() {
                let Reply::Chunks(body) = replies.recv().map_err(hung_up)? else {
                    bail!("expected a chunk batch");
                };
                if let Some(batch) = next.next() {
                    ask(Request::Chunks(encode_request(batch)), &mut run)?;
                    in_flight.push_back(batch);
                }
                for (id, bytes) in decode_reply(&body, batch, &limits)? {
                    incoming.push(id, bytes);
                }
            }
            Ok(())
        })();
        run.chunks_at = start.elapsed();
        incoming.close(fetched.as_ref().err().map(|e| format!("{e:#}")));
        let applied = applying
            .join()
            .map_err(|_| anyhow!("the apply thread panicked"))?;
        fetched?;
        applied.context("apply failed")?;
        Ok(())
    });
    applied?;
    run.applied_at = start.elapsed();
    ask(Request::Ack(remote.digest().to_vec()), &mut run)?;
    Ok(run)
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
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
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
                base: None,
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
                base: Some(&src_previous),
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
}
