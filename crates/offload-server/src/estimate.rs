//! `offload move --dry-run` and the prediction every move to the edge records: the bytes
//! that would cross, from the agent's diff of its copy of the workspace against the
//! cloud's, and the time they would take, from the rate and the downtime of the owner's
//! recent moves.

use std::time::Duration;

use offload_core::agent::{Command, EdgeSpec, Prediction, Reply, Timings, WorkspaceEstimate};
use offload_core::api::{MoveEstimate, MoveRequest};
use offload_core::events::EventBody;
use offload_core::{ContainerRecord, Location, MoveDirection, MoveOutcome};
use offload_store::{Principal, StreamEntry};

use crate::controller::Controller;
use crate::error::ActionError;

/// How long the agent may take to compare the workspaces.
const ESTIMATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Recent moves the link's rate and the downtime come from, at most.
const HISTORY: usize = 10;
/// A transfer smaller than this is mostly round trips and scans: it says little about
/// the link's rate.
const RATE_MIN_BYTES: u64 = 1 << 20;

/// How the image would reach the edge.
fn image_route(found: &WorkspaceEstimate, spec: &EdgeSpec) -> &'static str {
    if found.image_present {
        "present"
    } else if spec.image_pullable {
        "pull"
    } else {
        "stream"
    }
}

/// The prediction for moving `found` (and `image_bytes` of image streamed by the server)
/// to the edge, from the timings of the owner's recent moves there that succeeded.
pub(crate) fn predict(
    found: &WorkspaceEstimate,
    image_bytes: u64,
    recent: &[Timings],
) -> Prediction {
    let recent = &recent[..recent.len().min(HISTORY)];
    let (bytes, ms) = recent
        .iter()
        .filter_map(|t| Some((t.bytes, t.precopy_ms?)))
        .filter(|&(bytes, ms)| bytes >= RATE_MIN_BYTES && ms > 0)
        .fold((0u64, 0u64), |(b, m), (bytes, ms)| {
            (b.saturating_add(bytes), m.saturating_add(ms))
        });
    let rate = (ms > 0)
        .then(|| bytes.saturating_mul(1000) / ms)
        .filter(|&r| r > 0);
    let crossing = found.bytes.saturating_add(image_bytes);
    let mut downtimes: Vec<u64> = recent.iter().filter_map(|t| t.downtime_ms).collect();
    downtimes.sort_unstable();
    Prediction {
        bytes: found.bytes,
        image_bytes,
        rate_bytes_per_sec: rate,
        precopy_ms: rate.map(|r| crossing.saturating_mul(1000) / r),
        downtime_ms: downtimes.get(downtimes.len() / 2).copied(),
        samples: u32::try_from(recent.len()).unwrap_or(u32::MAX),
    }
}

/// The timings of the moves to the edge that succeeded among `entries` of the stream.
fn done_to_edge(entries: &[StreamEntry]) -> Vec<Timings> {
    entries
        .iter()
        .filter_map(|e| serde_json::from_str::<EventBody>(&e.body).ok())
        .filter_map(|body| match body {
            EventBody::MoveEnded {
                direction: MoveDirection::ToEdge,
                outcome,
                timings,
                ..
            } if outcome == MoveOutcome::Done.as_str() => Some(timings),
            _ => None,
        })
        .collect()
}

impl Controller {
    /// Asks the agent of the device the move goes to what a move of `record` would bring and predicts its times.
    /// Returns the agent's findings, how the image would get there, and the prediction.
    pub(crate) async fn forecast(
        &self,
        record: &ContainerRecord,
        spec: &EdgeSpec,
    ) -> Result<(WorkspaceEstimate, &'static str, Prediction), ActionError> {
        let reply = self
            .hub
            .request(
                &record.owner,
                record.device.as_deref(),
                Command::Estimate { spec: spec.clone() },
                ESTIMATE_TIMEOUT,
            )
            .await
            .map_err(|e| ActionError::Conflict(format!("cannot estimate the move: {e}")))?;
        let Reply::Estimated { estimate: found } = reply else {
            return Err(ActionError::Conflict(format!(
                "cannot estimate the move: the agent answered `{}` (is it older than the server?)",
                reply.kind()
            )));
        };
        let route = image_route(&found, spec);
        let image_bytes = match route {
            "stream" => self
                .runtime()
                .image(record.image.as_str())
                .await?
                .map_or(0, |i| i.size),
            _ => 0,
        };
        let owner = record.owner.clone();
        // Moves end in the stream as `move_ended`; a few more are read than used, as some
        // went the other way or did not succeed.
        let entries = self
            .db(move |s| s.stream_recent(&owner, "move_ended", HISTORY * 4))
            .await?;
        let recent = done_to_edge(&entries);
        let prediction = predict(&found, image_bytes, &recent);
        Ok((found, route, prediction))
    }

    /// `offload move ID --to edge --dry-run`: what the move would do now; nothing moves.
    pub async fn estimate_move(
        &self,
        who: &Principal,
        id_or_name: &str,
        req: &MoveRequest,
    ) -> Result<MoveEstimate, ActionError> {
        let mut record = self.find(who, id_or_name).await?;
        if req.to != Location::Edge {
            return Err(ActionError::BadRequest(
                "a dry run estimates a move to the edge; a move back sends only what the \
                 edge has not synced yet (see the recovery point in `offload show`)"
                    .to_owned(),
            ));
        }
        if record.location == Location::Edge {
            return Err(ActionError::Conflict(format!(
                "container {} is already at the edge",
                record.id
            )));
        }
        crate::mover::require_movable(&record)?;
        self.require_agent(&record, Location::Edge)?;
        // The device the move would go to; nothing is saved.
        record.device = Some(self.choose_device(&record, req.device.as_deref()).await?);
        let spec = self.edge_spec(&record).await?;
        let (found, route, prediction) = self.forecast(&record, &spec).await?;
        Ok(MoveEstimate {
            container_id: record.id.to_string(),
            direction: MoveDirection::ToEdge,
            device: record.device.clone().unwrap_or_default(),
            files: found.files,
            deletes: found.deletes,
            tree_bytes: found.tree_bytes,
            image: route.to_owned(),
            prediction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offload_core::{ContainerId, Name};

    fn timings(bytes: u64, precopy_ms: u64, downtime_ms: u64) -> Timings {
        Timings {
            bytes,
            precopy_ms: Some(precopy_ms),
            downtime_ms: Some(downtime_ms),
            ..Timings::default()
        }
    }

    fn found(bytes: u64) -> WorkspaceEstimate {
        WorkspaceEstimate {
            bytes,
            files: 1,
            deletes: 0,
            tree_bytes: bytes,
            image_present: true,
        }
    }

    #[test]
    fn the_rate_comes_from_large_transfers_and_the_downtime_is_the_median() {
        let a = timings(20 << 20, 2000, 900);
        let b = timings(10 << 20, 1000, 500);
        // Small: its downtime counts, its rate does not.
        let c = timings(4096, 300, 700);
        let p = predict(&found(30 << 20), 0, &[a.clone(), b, c]);
        assert_eq!(p.rate_bytes_per_sec, Some(10 << 20));
        assert_eq!(p.precopy_ms, Some(3000));
        assert_eq!(p.downtime_ms, Some(700));
        assert_eq!(p.samples, 3);
        assert_eq!(p.bytes, 30 << 20);

        // Streaming the image adds its bytes to the time.
        let p = predict(&found(10 << 20), 10 << 20, &[a]);
        assert_eq!((p.precopy_ms, p.image_bytes), (Some(2000), 10 << 20));
    }

    #[test]
    fn without_history_only_the_bytes_are_known() {
        let p = predict(&found(123), 0, &[]);
        assert_eq!(
            p,
            Prediction {
                bytes: 123,
                ..Prediction::default()
            }
        );
        // Only small transfers: a downtime but no rate.
        let p = predict(&found(123), 0, &[timings(10, 50, 400)]);
        assert_eq!((p.rate_bytes_per_sec, p.downtime_ms), (None, Some(400)));
    }

    #[test]
    fn only_moves_to_the_edge_that_succeeded_count() {
        let entry = |direction, outcome: &str, bytes| StreamEntry {
            id: 1,
            at_ms: 0,
            user: None,
            body: serde_json::to_string(&EventBody::MoveEnded {
                container_id: ContainerId::random(),
                name: Name::parse("box").unwrap(),
                direction,
                outcome: outcome.to_owned(),
                reason: None,
                timings: timings(bytes, 1, 1),
            })
            .unwrap(),
        };
        let entries = [
            entry(MoveDirection::ToEdge, "done", 1),
            entry(MoveDirection::ToCloud, "done", 2),
            entry(MoveDirection::ToEdge, "rolled_back", 3),
            entry(MoveDirection::ToNode, "done", 4),
            entry(MoveDirection::ToEdge, "done", 5),
            StreamEntry {
                id: 2,
                at_ms: 0,
                user: None,
                body: "{}".into(),
            },
        ];
        let bytes: Vec<u64> = done_to_edge(&entries).iter().map(|t| t.bytes).collect();
        assert_eq!(bytes, [1, 5]);
    }
}
