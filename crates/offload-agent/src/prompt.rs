//! Asking the user at the agent's terminal, and on the desktop where there is one: a query
//! from the server, answered y/N before its deadline with the time left counting down, or
//! with the notification's Accept and Decline buttons, whichever comes first.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offload_core::api::QueryView;
use tokio::sync::mpsc;

use crate::client::Api;
use crate::desktop::Desktop;

/// The agent's side of queries.
pub struct Prompter {
    api: Api,
    auto_accept: bool,
    interactive: bool,
    desktop: Option<Desktop>,
    lines: tokio::sync::Mutex<Option<mpsc::Receiver<String>>>,
    closed: Mutex<HashSet<String>>,
}

impl Prompter {
    pub fn new(api: Api, auto_accept: bool, desktop: Option<Desktop>) -> Arc<Self> {
        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        let lines = interactive.then(|| {
            let (tx, rx) = mpsc::channel(4);
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Arc::new(Prompter {
            api,
            auto_accept,
            interactive,
            desktop,
            lines: tokio::sync::Mutex::new(lines),
            closed: Mutex::new(HashSet::new()),
        })
    }

    /// A notice from the server, on the desktop too.
    pub fn notice(&self, text: &str) {
        if let Some(desktop) = &self.desktop {
            desktop.notice("offload", text);
        }
    }

    /// The server closed a query (answered elsewhere, expired, withdrawn).
    pub fn closed(&self, id: &str, state: &str) {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned());
        eprintln!("\roffload: query {id} is {state}");
    }

    fn is_closed(&self, id: &str) -> bool {
        self.closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    async fn answer(&self, id: &str, accept: bool) {
        let verb = if accept { "accept" } else { "decline" };
        let result: Result<QueryView, _> = self
            .api
            .post(&format!("/v1/queries/{id}/{verb}"), &serde_json::json!({}))
            .await;
        match result {
            Ok(q) => eprintln!("offload: query {id} {}", q.state),
            Err(e) => eprintln!("offload: could not {verb} query {id}: {e}"),
        }
    }

    /// Handles one query: auto-accept, a prompt, or instructions.
    pub async fn ask(&self, query: QueryView, deadline_secs: u64) {
        let name = if query.container_name.is_empty() {
            query.container_id.clone()
        } else {
            format!("{} ({})", query.container_name, query.container_id)
        };
        // A move inside the cloud (to another node of its cluster) or to this machine.
        let (whither, here) = match query.to_node {
            Some(_) => ("to another node of the cloud", "there"),
            None => ("to this machine", "here"),
        };
        eprintln!(
            "\noffload: the cloud asks to move {name} {whither}: {}",
            query.reason
        );
        if self.auto_accept {
            eprintln!("offload: accepting (--auto-accept)");
            if let Some(desktop) = &self.desktop {
                desktop.notice(
                    "offload",
                    &format!("Moving {} {whither} (--auto-accept)", query.container_name),
                );
            }
            self.answer(&query.id, true).await;
            return;
        }
        let mut clicked = self.desktop.as_ref().map(|d| d.ask(&query, deadline_secs));
        let deadline = Instant::now() + Duration::from_secs(deadline_secs);
        if !self.interactive {
            eprintln!(
                "offload: answer with `offload accept {id}` or `offload decline {id}` within {deadline_secs} s",
                id = query.id
            );
            if let Some(clicked) = clicked {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Ok(Ok(yes)) = tokio::time::timeout(left, clicked).await
                    && !self.is_closed(&query.id)
                {
                    self.answer(&query.id, yes).await;
                }
            }
            return;
        }
        // One prompt at a time: the terminal has one line to type on.
        let mut lines = self.lines.lock().await;
        let Some(lines) = lines.as_mut() else { return };
        loop {
            if self.is_closed(&query.id) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                eprintln!("\roffload: no answer in time; the server applies its default");
                return;
            }
            eprint!(
                "\r\x1b[Kmove {name} {here}? [y/N] ({}s left) ",
                left.as_secs()
            );
            let _ = std::io::stderr().flush();
            let button = async {
                match clicked.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let typed = tokio::select! {
                yes = button => match yes {
                    Some(yes) => {
                        eprintln!();
                        self.answer(&query.id, yes).await;
                        return;
                    }
                    // The notification went away without an answer: the terminal remains.
                    None => {
                        clicked = None;
                        continue;
                    }
                },
                typed = tokio::time::timeout(Duration::from_secs(1).min(left), lines.recv()) => typed,
            };
            match typed {
                Ok(Some(line)) => {
                    let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
                    self.answer(&query.id, yes).await;
                    return;
                }
                Ok(None) => return,
                Err(_) => continue,
            }
        }
    }
}
