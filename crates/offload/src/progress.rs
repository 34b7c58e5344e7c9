//! Following a move from the CLI: a progress bar fed by the server's view of the move.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use offload_agent::client::Api;
use offload_core::agent::{Prediction, Timings};
use offload_core::api::{ContainerView, MoveEstimate};
use offload_core::size::format_bytes;

/// One line on the phases of a move.
pub fn describe_timings(t: &Timings) -> String {
    let s = seconds;
    let mut parts = Vec::new();
    if t.image_ms.is_some() {
        parts.push(format!(
            "image {} ({})",
            s(t.image_ms),
            t.image.as_deref().unwrap_or("?")
        ));
    }
    if t.precopy_ms.is_some() {
        parts.push(format!("pre-copy {}", s(t.precopy_ms)));
    }
    parts.push(format!("stop {}", s(t.stop_ms)));
    parts.push(format!("final sync {}", s(t.final_sync_ms)));
    parts.push(format!("start {}", s(t.start_ms)));
    parts.push(format!("downtime {}", s(t.downtime_ms)));
    parts.push(format!("total {}", s(t.total_ms)));
    parts.push(format!("{} transferred", format_bytes(t.bytes)));
    parts.join(", ")
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or("-".to_owned(), |ms| format!("{:.2}s", ms as f64 / 1000.0))
}

/// One line on what a move was predicted to cost.
pub fn describe_prediction(p: &Prediction) -> String {
    let mut parts = vec![format!("{} to cross", format_bytes(p.bytes))];
    if p.image_bytes > 0 {
        parts.push(format!("image {} streamed", format_bytes(p.image_bytes)));
    }
    match p.rate_bytes_per_sec {
        Some(rate) => parts.push(format!(
            "pre-copy {} at {}/s",
            seconds(p.precopy_ms),
            format_bytes(rate)
        )),
        None => parts.push("pre-copy - (no recent transfer large enough to time the link)".into()),
    }
    parts.push(format!("downtime {}", seconds(p.downtime_ms)));
    parts.push(match p.samples {
        0 => "no earlier move to learn from".to_owned(),
        1 => "from 1 recent move".to_owned(),
        n => format!("from {n} recent moves"),
    });
    parts.join(", ")
}

/// What `offload move --dry-run` prints.
pub fn describe_estimate(e: &MoveEstimate) -> String {
    let image = match e.image.as_str() {
        "present" => "already at the edge".to_owned(),
        "pull" => "pulled by the edge from its registry".to_owned(),
        _ => format!(
            "streamed from the server ({})",
            format_bytes(e.prediction.image_bytes)
        ),
    };
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "dry run: nothing moved\n\
         device:     {}\n\
         workspace:  {} to write, {} to remove; {} of {} would cross\n\
         image:      {image}\n\
         predicted:  {}",
        e.device,
        plural(e.files, "file", "files"),
        e.deletes,
        format_bytes(e.prediction.bytes),
        format_bytes(e.tree_bytes),
        describe_prediction(&e.prediction)
    )
}

/// Polls the container until its move ends; draws progress when stderr is a terminal.
/// Exit code 0 when the move reached its target, 1 when it was rolled back.
pub async fn follow_move(api: &Api, id: &str) -> anyhow::Result<i32> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let path = format!("/v1/containers/{id}");
    let view = loop {
        let view: ContainerView = api.get(&path).await?;
        let Some(moving) = &view.moving else {
            break view;
        };
        if let Some(why) = &view.reason {
            // The server cannot tell how the move ended until the agent reports.
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            eprintln!(
                "error: the move of {} is in doubt at {}: {why}",
                view.id,
                moving.step.as_str()
            );
            return Ok(1);
        }
        if let Some(bar) = &bar {
            match &moving.progress {
                Some(p) => {
                    bar.set_message(format!("{} ({})", moving.step.as_str(), p.phase));
                    bar.set_length(p.total.max(p.done));
                    bar.set_position(p.done);
                }
                None => bar.set_message(moving.step.as_str().to_owned()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let Some(report) = &view.last_move else {
        bail!("the move of {id} ended without a report");
    };
    if report.outcome == offload_core::MoveOutcome::Done {
        println!(
            "{} is at the {} (generation {}): {}",
            view.id,
            view.location.as_str(),
            view.generation,
            describe_timings(&report.timings)
        );
        Ok(0)
    } else {
        let ended = match report.outcome {
            offload_core::MoveOutcome::Failed { .. } => "failed",
            _ => "was rolled back",
        };
        eprintln!(
            "error: the move of {} {ended}: {}; it is {} in the {}",
            view.id,
            report.outcome.reason().unwrap_or("no reason given"),
            view.state.as_str(),
            view.location.as_str()
        );
        Ok(1)
    }
}
