//! offload's side, in process: one pull of the sync session (`offload_sync::session`, the
//! code the agent runs) over its in-process transport, which answers as the server does
//! (rescan with the previous scan, the manifest as a delta from the receiver's base, chunks
//! served out of the tree) and counts every body. That count is what the wire would carry
//! (message bodies; TLS and HTTP framing are not modelled: `product` measures those).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use offload_sync::Manifest;
use offload_sync::session::{self, InProcess, Pull, PullStats};

/// What the sending side holds: its tree and its previous scan (for an incremental rescan,
/// and the manifest the receiver last received).
pub struct SenderSide<'a> {
    pub root: &'a Path,
    pub previous: Option<&'a Manifest>,
}

/// What the receiving side holds: its tree, its previous scan of it, the sender's manifest
/// it last received (its base).
pub struct ReceiverSide<'a> {
    pub root: &'a Path,
    pub previous: Option<&'a Manifest>,
    pub base: Option<&'a Manifest>,
}

/// One offload sync, measured.
#[derive(Clone, Debug, Default)]
pub struct OffloadRun {
    /// Bytes from sender to receiver: the manifest update, then chunk batches.
    pub to_receiver: u64,
    /// Bytes from receiver to sender: the base digest and the chunk requests.
    pub to_sender: u64,
    /// Of `to_receiver`, the manifest update alone.
    pub manifest_bytes: u64,
    /// Requests the receiver made (each a round trip), the manifest's included.
    pub requests: u64,
    pub chunks_fetched: u64,
    pub sender_scan: Duration,
    pub sender_hashed_bytes: u64,
    pub receiver_scan: Duration,
    /// From the start until the delta was computed.
    pub delta_at: Duration,
    /// From the start until the last chunk batch was decoded.
    pub chunks_at: Duration,
    /// From the start until the apply (which runs beside the transfer) was durable.
    pub applied_at: Duration,
    pub wall: Duration,
}

impl OffloadRun {
    /// A run from the session's own account of a pull.
    pub fn from_stats(s: &PullStats, sender_scan: Duration, sender_hashed_bytes: u64) -> Self {
        OffloadRun {
            to_receiver: s.to_receiver,
            to_sender: s.to_sender,
            manifest_bytes: s.manifest_bytes,
            requests: s.requests,
            chunks_fetched: s.chunks_fetched,
            sender_scan,
            sender_hashed_bytes,
            receiver_scan: s.local_scan_time,
            delta_at: s.delta_at,
            chunks_at: s.chunks_at,
            applied_at: s.applied_at,
            wall: s.wall,
        }
    }
}

/// Syncs the sender's tree into the receiver's and measures it.
pub fn sync(sender: &SenderSide<'_>, receiver: &ReceiverSide<'_>) -> Result<OffloadRun> {
    let transport = InProcess::new(sender.root, sender.previous.cloned());
    let pulled = session::pull(
        &transport,
        &Pull {
            root: receiver.root,
            previous: receiver.previous,
            base: receiver.base,
            progress: None,
        },
    )
    .context("the in-process pull failed")?;
    let (scan, scan_time) = transport.last_scan().unwrap_or_default();
    Ok(OffloadRun::from_stats(
        &pulled.stats,
        scan_time,
        scan.hashed_bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree;
    use offload_sync::{ScanOptions, scan};

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
