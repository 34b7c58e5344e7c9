//! The event stream: every event is written to the store, then broadcast to the live
//! watchers, and `GET /v1/events` serves it as server-sent events. A watcher that
//! reconnects with `Last-Event-ID` first reads what it missed from the store, then follows
//! the broadcast, so it sees every event once, in order.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use offload_core::UserName;
use offload_core::events::{Event, EventBody};
use offload_store::{Audience, Store, StreamEntry};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::clock::Clock;
use crate::db;
use crate::error::ActionError;
use crate::http::{ApiQuery, AppState, Caller};

/// Live events a slow watcher may fall behind by before it goes back to the store.
const BROADCAST_CAPACITY: usize = 1024;
/// Events read from the store at a time while catching up.
const PAGE: usize = 256;
/// Events a watcher gets, without `Last-Event-ID`, from before it connected.
pub const DEFAULT_TAIL: usize = 50;
/// How often the stream is pruned of events older than the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Who reads a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    Admin,
    User(UserName),
}

impl Viewer {
    fn audience(&self) -> Audience<'_> {
        match self {
            Viewer::Admin => Audience::All,
            Viewer::User(user) => Audience::User(user),
        }
    }

    fn sees(&self, event: &Event) -> bool {
        match (self, &event.user) {
            (Viewer::Admin, _) | (Viewer::User(_), None) => true,
            (Viewer::User(me), Some(user)) => me == user,
        }
    }
}

/// The event log: the store's `stream` table and its live broadcast.
pub struct EventLog {
    store: Arc<Store>,
    live: broadcast::Sender<Arc<Event>>,
    /// Held across the insert and the broadcast, so that watchers receive events in the
    /// order of their ids.
    order: Arc<Mutex<()>>,
    clock: Clock,
}

impl EventLog {
    pub fn new(store: Arc<Store>, clock: Clock) -> Self {
        EventLog {
            store,
            live: broadcast::channel(BROADCAST_CAPACITY).0,
            order: Arc::new(Mutex::new(())),
            clock,
        }
    }

    /// Records an event about `user` (none: the cloud's own) and tells the watchers. An
    /// event that cannot be written is logged and dropped: the action it reports stands.
    pub async fn publish(&self, user: Option<&UserName>, body: EventBody) {
        let at_ms = i64::try_from(self.clock.since_epoch().as_millis()).unwrap_or(i64::MAX);
        let kind = body.kind();
        let json = match serde_json::to_string(&body) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(kind, error = %e, "cannot encode an event");
                return;
            }
        };
        let mut event = Event {
            id: 0,
            at_ms,
            user: user.cloned(),
            body,
        };
        let (live, order) = (self.live.clone(), self.order.clone());
        let written = db::call(&self.store, move |s| {
            let _in_order = order.lock().unwrap_or_else(|p| p.into_inner());
            event.id = s.append_stream(at_ms, event.user.as_ref(), &json)?;
            // No receivers is not an error: nobody is watching.
            let _ = live.send(Arc::new(event));
            Ok(())
        })
        .await;
        if let Err(e) = written {
            tracing::error!(kind, error = %e, "cannot record an event");
        }
    }

    /// Where a watcher starts: after `last_id` if it gave one (which must be in its stream
    /// and still kept), else before the last `tail` events it sees.
    pub async fn start(
        &self,
        viewer: &Viewer,
        last_id: Option<u64>,
        tail: usize,
    ) -> Result<u64, ActionError> {
        let v = viewer.clone();
        match last_id {
            Some(0) => Ok(0),
            Some(id) => {
                let known =
                    db::call(&self.store, move |s| s.stream_visible(v.audience(), id)).await?;
                if known {
                    Ok(id)
                } else {
                    Err(ActionError::BadRequest(format!(
                        "event {id} is not in your stream (unknown, or older than the server \
                         keeps events); reconnect without Last-Event-ID to start from the latest"
                    )))
                }
            }
            None => {
                db::call(&self.store, move |s| {
                    s.stream_tail_start(v.audience(), tail)
                })
                .await
            }
        }
    }

    /// The events `viewer` sees after `after`: what the store has, then, with `follow`,
    /// the live ones as they happen. The stream ends when the receiver is dropped.
    pub fn watch(
        self: &Arc<Self>,
        viewer: Viewer,
        after: u64,
        follow: bool,
    ) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(64);
        let log = self.clone();
        tokio::spawn(async move {
            if let Err(e) = log.feed(&viewer, after, follow, &tx).await {
                tracing::debug!(error = %e, "an event watcher ended");
            }
        });
        rx
    }

    async fn feed(
        &self,
        viewer: &Viewer,
        mut last: u64,
        follow: bool,
        tx: &mpsc::Sender<Event>,
    ) -> Result<(), WatchEnded> {
        // Subscribed before reading the store: whatever is written after this point
        // arrives live, and what the store returned is skipped there by id.
        let mut live = self.live.subscribe();
        loop {
            loop {
                let v = viewer.clone();
                let page = db::call(&self.store, move |s| {
                    s.stream_after(v.audience(), last, PAGE)
                })
                .await
                .map_err(|e| WatchEnded::Store(e.to_string()))?;
                let full = page.len() == PAGE;
                for entry in page {
                    last = entry.id;
                    match decode(entry) {
                        Ok(event) => tx.send(event).await.map_err(|_| WatchEnded::Gone)?,
                        Err(e) => tracing::error!(error = %e, "skipping an undecodable event"),
                    }
                }
                if !full {
                    break;
                }
            }
            if !follow {
                return Ok(());
            }
            loop {
                tokio::select! {
                    received = live.recv() => match received {
                        Ok(event) => {
                            if event.id > last && viewer.sees(&event) {
                                last = event.id;
                                tx.send(Event::clone(&event)).await.map_err(|_| WatchEnded::Gone)?;
                            }
                        }
                        // Fell behind the broadcast: catch up from the store.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    () = tx.closed() => return Err(WatchEnded::Gone),
                }
            }
        }
    }

    /// Forgets events older than `retention`, every few minutes, for as long as the
    /// server runs.
    pub fn prune_every(self: &Arc<Self>, retention: Duration) {
        let log = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            loop {
                tick.tick().await;
                let cutoff = log.clock.since_epoch().saturating_sub(retention);
                let before_ms = i64::try_from(cutoff.as_millis()).unwrap_or(0);
                match db::call(&log.store, move |s| s.prune_stream(before_ms)).await {
                    Ok(0) => {}
                    Ok(gone) => tracing::debug!(gone, "pruned the event stream"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune the event stream"),
                }
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum WatchEnded {
    #[error("the watcher went away")]
    Gone,
    #[error("cannot read the event stream: {0}")]
    Store(String),
}

fn decode(entry: StreamEntry) -> Result<Event, serde_json::Error> {
    Ok(Event {
        id: entry.id,
        at_ms: entry.at_ms,
        user: entry.user,
        body: serde_json::from_str(&entry.body)?,
    })
}

/// The query string of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event (as the `Last-Event-ID` header does; the header wins).
    pub after: Option<u64>,
    /// Keep the stream open and send events as they happen (default true).
    pub follow: Option<bool>,
    /// Without `after`, how many earlier events to send first (default 50).
    pub tail: Option<usize>,
}

/// The event stream as server-sent events: `id` is the event's id, `event` its kind, `data`
/// the event as JSON. Users see their own events and the cloud's; admins see every event.
#[utoipa::path(
    get,
    path = "/v1/events",
    params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "text/event-stream of Event", body = Event),
        (status = 400, description = "Unknown Last-Event-ID", body = offload_core::api::ApiError),
        (status = 401, description = "No valid token", body = offload_core::api::ApiError),
    ),
    tag = "events"
)]
pub async fn events_stream(
    State(state): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ActionError> {
    let header = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ActionError::BadRequest("Last-Event-ID must be an event id (a number)".into())
                })?,
        ),
    };
    let viewer = if who.admin {
        Viewer::Admin
    } else {
        Viewer::User(who.user.clone())
    };
    let log = state.ctl.events.clone();
    let tail = query.tail.unwrap_or(DEFAULT_TAIL).min(10_000);
    let after = log.start(&viewer, header.or(query.after), tail).await?;
    let rx = log.watch(viewer, after, query.follow.unwrap_or(true));
    Ok(Sse::new(sse_events(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn sse_events(rx: mpsc::Receiver<Event>) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let sse = SseEvent::default()
            .id(event.id.to_string())
            .event(event.body.kind());
        let sse = match serde_json::to_string(&event) {
            Ok(json) => sse.data(json),
            Err(_) => sse.data("{}"),
        };
        Some((Ok(sse), rx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use offload_core::ContainerId;

    fn user(name: &str) -> UserName {
        UserName::parse(name).expect("valid")
    }

    fn removed(id: &ContainerId) -> EventBody {
        EventBody::ContainerRemoved {
            container_id: id.clone(),
            name: offload_core::Name::parse("box").expect("valid"),
        }
    }

    fn log() -> Arc<EventLog> {
        let store = Arc::new(Store::open_in_memory().expect("store"));
        Arc::new(EventLog::new(store, Clock::new()))
    }

    async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
    }

    #[tokio::test]
    async fn a_watcher_resuming_mid_stream_gets_every_later_event_once_in_order() {
        let log = log();
        let alice = user("alice");
        let id = ContainerId::random();
        for _ in 0..3 {
            log.publish(Some(&alice), removed(&id)).await;
        }
        let viewer = Viewer::User(alice.clone());
        let after = log.start(&viewer, Some(2), 50).await.expect("known id");
        let mut rx = log.watch(viewer, after, true);
        assert_eq!(next(&mut rx).await.id, 3);
        // Published while and after the watcher catches up: each arrives once.
        for _ in 0..400 {
            log.publish(Some(&alice), removed(&id)).await;
        }
        for expected in 4..=403 {
            assert_eq!(next(&mut rx).await.id, expected);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "nothing more"
        );
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_the_broadcast_catches_up_from_the_store() {
        let log = log();
        let alice = user("alice");
        let id = ContainerId::random();
        let mut rx = log.watch(Viewer::Admin, 0, true);
        // Far more than the broadcast and the watcher's queue hold, while nobody reads.
        let total = BROADCAST_CAPACITY as u64 + 500;
        for _ in 0..total {
            log.publish(Some(&alice), removed(&id)).await;
        }
        for expected in 1..=total {
            assert_eq!(next(&mut rx).await.id, expected);
        }
    }

    #[tokio::test]
    async fn users_never_see_each_others_events_and_everyone_sees_the_clouds() {
        let log = log();
        let (alice, bob) = (user("alice"), user("bob"));
        let id = ContainerId::random();
        let mut bobs = log.watch(Viewer::User(bob.clone()), 0, true);
        let mut admins = log.watch(Viewer::Admin, 0, true);
        log.publish(Some(&alice), removed(&id)).await;
        log.publish(
            None,
            EventBody::PressureStarted {
                resource: "cpu".into(),
                node: None,
                usage: 0.9,
            },
        )
        .await;
        log.publish(Some(&bob), removed(&id)).await;
        let seen: Vec<u64> = vec![next(&mut bobs).await.id, next(&mut bobs).await.id];
        assert_eq!(seen, [2, 3]);
        for expected in 1..=3 {
            assert_eq!(next(&mut admins).await.id, expected);
        }
        // Bob cannot resume after Alice's event: it answers as an unknown one.
        let theirs = log.start(&Viewer::User(bob.clone()), Some(1), 50).await;
        let unknown = log.start(&Viewer::User(bob.clone()), Some(99), 50).await;
        for refused in [theirs, unknown] {
            let e = refused.expect_err("refused");
            assert!(e.to_string().contains("is not in your stream"), "{e}");
        }
    }

    #[tokio::test]
    async fn without_an_id_a_watcher_starts_with_the_latest_events_and_can_stop_there() {
        let log = log();
        let alice = user("alice");
        let id = ContainerId::random();
        for _ in 0..10 {
            log.publish(Some(&alice), removed(&id)).await;
        }
        let viewer = Viewer::User(alice);
        let after = log.start(&viewer, None, 3).await.expect("start");
        let mut rx = log.watch(viewer, after, false);
        let mut ids = Vec::new();
        while let Some(event) = rx.recv().await {
            ids.push(event.id);
        }
        assert_eq!(ids, [8, 9, 10]);
    }
}
