//! The live page `/` and its event stream `/api/events`, served with the metrics.
//!
//! The page (`assets/index.html`, `page.js`, `page.css`) and its chart library (uPlot 1.6.32 from
//! npm, MIT, its LICENSE in `assets/uplot/`) are built into the binary: the page works offline.
//!
//! `/api/events` is a server-sent event stream. Each committed batch is one `batch` event whose
//! JSON is `{"progress": <the progress record, as --progress json prints it>, "columns":
//! [{"name", "decimal"}], "chart": {"key", "value", "key_name", "value_name"} | null, "rows":
//! [{"key", "exact", "shown"}], "deadLetters": [{"reason", "position", "raw"}]}` (`rows` and
//! `deadLetters` are the bounded extracts of [`super::taps`]). A new client first gets a `reset`
//! event, then the last [`RECENT_EVENTS`] batch events, then a `latest` event (`{"columns",
//! "chart", "rows"}`: the newest row of every key ever seen, at most [`MAX_KEYS`]), then every
//! new batch as it commits. A client that falls behind by more than [`CLIENT_BUFFER`] events is
//! disconnected; its browser reconnects and starts over from the history.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use engine::progress::BatchProgress;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::taps::{Chart, Column, Letter, MAX_KEYS, Row, RowsExtract};

/// How many batch events a new client gets first.
pub const RECENT_EVENTS: usize = 100;
/// How many events may wait for a slow client before it is disconnected.
pub const CLIENT_BUFFER: usize = 256;
/// A comment line is sent this often on an idle stream, so that a closed tab is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The body of `/api/events`, `/` or an asset.
pub type PageBody = BoxBody<Bytes, Infallible>;

const INDEX_HTML: &str = include_str!("assets/index.html");
const PAGE_JS: &str = include_str!("assets/page.js");
const PAGE_CSS: &str = include_str!("assets/page.css");
const UPLOT_JS: &str = include_str!("assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("assets/uplot/LICENSE");

/// The page's state: the batches staged by the sink taps until their progress arrives, the recent
/// events and the latest row of each key.
pub struct Page {
    state: Mutex<State>,
    events: broadcast::Sender<Bytes>,
}

#[derive(Default)]
struct State {
    /// The last rows written, for the batch id they belong to.
    rows: Option<(u64, RowsExtract)>,
    /// The last dead letters stored, for the batch id they belong to.
    letters: Option<(u64, Vec<Letter>)>,
    /// The output's columns and chart, from the first batch with rows.
    columns: Vec<Column>,
    chart: Option<Chart>,
    /// The last [`RECENT_EVENTS`] `batch` events, SSE-framed, oldest first.
    history: VecDeque<Bytes>,
    /// Each key's newest row and when it came (a counter), for the `latest` event.
    latest: BTreeMap<String, (u64, Row)>,
    updates: u64,
}

/// A `batch` event but its progress record, which is spliced in as `--progress json` wrote it.
#[derive(Serialize)]
struct BatchEvent<'a> {
    columns: &'a [Column],
    chart: &'a Option<Chart>,
    rows: &'a [Row],
    #[serde(rename = "deadLetters")]
    dead_letters: &'a [Letter],
}

#[derive(Serialize)]
struct LatestEvent<'a> {
    columns: &'a [Column],
    chart: &'a Option<Chart>,
    rows: Vec<&'a Row>,
}

impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

impl Page {
    /// No batches yet.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            events: broadcast::channel(CLIENT_BUFFER).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves whole values: keep serving them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps batch `batch_id`'s rows until its progress arrives (a retried write replaces them).
    pub fn stage_rows(&self, batch_id: u64, rows: RowsExtract) {
        self.state().rows = Some((batch_id, rows));
    }

    /// Keeps batch `batch_id`'s dead letters until its progress arrives.
    pub fn stage_letters(&self, batch_id: u64, letters: Vec<Letter>) {
        self.state().letters = Some((batch_id, letters));
    }

    /// Publishes committed batch `p` with the rows and letters staged for it.
    pub fn publish(&self, p: &BatchProgress) {
        let mut state = self.state();
        let rows = match state.rows.take() {
            Some((id, extract)) if id == p.batch_id => {
                state.columns = extract.columns;
                state.chart = extract.chart;
                extract.rows
            }
            _ => Vec::new(),
        };
        let letters = match state.letters.take() {
            Some((id, letters)) if id == p.batch_id => letters,
            _ => Vec::new(),
        };
        let rest = serde_json::to_string(&BatchEvent {
            columns: &state.columns,
            chart: &state.chart,
            rows: &rows,
            dead_letters: &letters,
        })
        .unwrap_or_else(|_| "{}".to_owned());
        // `{"progress":<record>,` + the rest without its `{`; the record is one line of JSON.
        let event = Bytes::from(format!(
            "event: batch\ndata: {{\"progress\":{},{}\n\n",
            p.json_line(),
            rest.strip_prefix('{').unwrap_or("}")
        ));
        for row in rows {
            if let Some(key) = row.key.clone() {
                state.updates += 1;
                let n = state.updates;
                state.latest.insert(key, (n, row));
            }
        }
        while state.latest.len() > MAX_KEYS {
            // The key updated longest ago goes.
            let oldest = state
                .latest
                .iter()
                .min_by_key(|(_, (n, _))| *n)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                state.latest.remove(&k);
            }
        }
        if state.history.len() == RECENT_EVENTS {
            state.history.pop_front();
        }
        state.history.push_back(event.clone());
        // Under the lock, so a client subscribing now gets it either in its history or live,
        // never both or neither. No client is not an error.
        let _ = self.events.send(event);
    }

    /// What a new client gets first (reset, history, latest), and the live events after it.
    fn subscribe(&self) -> (Vec<Bytes>, broadcast::Receiver<Bytes>) {
        let state = self.state();
        let mut first = Vec::with_capacity(state.history.len() + 2);
        first.push(Bytes::from_static(
            b"retry: 1000\nevent: reset\ndata: {}\n\n",
        ));
        first.extend(state.history.iter().cloned());
        let mut latest: Vec<&(u64, Row)> = state.latest.values().collect();
        latest.sort_by_key(|(n, _)| *n);
        first.push(sse(
            "latest",
            &LatestEvent {
                columns: &state.columns,
                chart: &state.chart,
                rows: latest.into_iter().map(|(_, r)| r).collect(),
            },
        ));
        (first, self.events.subscribe())
    }

    /// The answer to `method path` when it is the page's (`/`, `/assets/...`, `/api/events`),
    /// else `None`.
    pub fn answer(&self, method: &Method, path: &str) -> Option<Response<PageBody>> {
        if method != Method::GET {
            return None;
        }
        let (content_type, body) = match path {
            "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
            "/assets/page.js" => ("text/javascript; charset=utf-8", PAGE_JS),
            "/assets/page.css" => ("text/css; charset=utf-8", PAGE_CSS),
            "/assets/uPlot.iife.min.js" => ("text/javascript; charset=utf-8", UPLOT_JS),
            "/assets/uPlot.min.css" => ("text/css; charset=utf-8", UPLOT_CSS),
            "/assets/uPlot.LICENSE" => ("text/plain; charset=utf-8", UPLOT_LICENSE),
            "/api/events" => return Some(self.event_stream()),
            _ => return None,
        };
        Some(response(
            StatusCode::OK,
            content_type,
            Full::new(Bytes::from_static(body.as_bytes())).boxed(),
        ))
    }

    fn event_stream(&self) -> Response<PageBody> {
        let (first, mut live) = self.subscribe();
        let (tx, rx) = mpsc::channel::<Bytes>(CLIENT_BUFFER);
        tokio::spawn(async move {
            for event in first {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
            keep_alive.tick().await;
            loop {
                let event = tokio::select! {
                    received = live.recv() => match received {
                        Ok(event) => event,
                        // Lagged: the browser reconnects and starts over from the history;
                        // Closed: the run is over.
                        Err(_) => return,
                    },
                    _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                };
                // An error means the client went away (hyper dropped the body).
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        let mut reply = response(
            StatusCode::OK,
            "text/event-stream",
            EventBody { rx }.boxed(),
        );
        reply.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-cache"),
        );
        reply
    }
}

/// `data` as one server-sent event named `name` (JSON has no raw newlines, so one `data:` line).
fn sse(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

fn response(status: StatusCode, content_type: &'static str, body: PageBody) -> Response<PageBody> {
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    reply
}

/// An event stream's body: whatever its task sends, until the task ends.
struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|e| e.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {

    use engine::progress::{SinkProgress, SourceProgress};

    use super::*;

    fn progress(batch_id: u64) -> BatchProgress {
        BatchProgress {
            batch_id,
            timestamp: "2026-12-01T12:00:00.000Z".to_owned(),
            num_input_rows: 1,
            sources: vec![SourceProgress {
                description: "test".to_owned(),
                num_input_rows: 1,
                ..SourceProgress::default()
            }],
            sink: SinkProgress {
                description: "test".to_owned(),
                num_output_rows: 1,
                ..SinkProgress::default()
            },
            ..BatchProgress::default()
        }
    }

    fn rows(keys: &[&str]) -> RowsExtract {
        RowsExtract {
            columns: vec![Column {
                name: "symbol".to_owned(),
                decimal: false,
            }],
            chart: None,
            rows: keys
                .iter()
                .map(|k| Row {
                    key: Some((*k).to_owned()),
                    exact: vec![Some((*k).to_owned())],
                    shown: vec![Some((*k).to_owned())],
                })
                .collect(),
        }
    }

    /// The (name, JSON) of each event in `bytes`.
    fn events(bytes: &[Bytes]) -> Vec<(String, serde_json::Value)> {
        bytes
            .iter()
            .map(|b| {
                let text = std::str::from_utf8(b).unwrap();
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap();
                let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                (name.to_owned(), serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    fn events_of(b: &Bytes) -> serde_json::Value {
        events(std::slice::from_ref(b)).remove(0).1
    }

    #[test]
    fn a_batch_event_carries_only_what_was_staged_for_that_batch() {
        let page = Page::new();
        page.stage_rows(0, rows(&["BTC-USD"]));
        page.stage_letters(0, Vec::new());
        page.publish(&progress(0));
        // Staged for batch 1 (a write that was then not committed), published as batch 2.
        page.stage_rows(1, rows(&["ETH-USD"]));
        page.publish(&progress(2));
        let (first, _) = page.subscribe();
        let events = events(&first);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["reset", "batch", "batch", "latest"]);
        assert_eq!(events[1].1["progress"]["batchId"], 0);
        assert_eq!(events[1].1["rows"][0]["key"], "BTC-USD");
        assert_eq!(events[2].1["progress"]["batchId"], 2);
        assert_eq!(events[2].1["rows"], serde_json::json!([]));
        assert_eq!(events[3].1["rows"].as_array().unwrap().len(), 1);
        // The progress record is the one `--progress json` prints.
        assert_eq!(
            events[1].1["progress"],
            serde_json::from_str::<serde_json::Value>(&progress(0).json_line()).unwrap()
        );
    }

    #[test]
    fn history_and_latest_rows_are_bounded() {
        let page = Page::new();
        let mut live = page.events.subscribe();
        for id in 0..(RECENT_EVENTS as u64 + 10) {
            let key = format!("K{id}");
            page.stage_rows(id, rows(&[&key]));
            page.publish(&progress(id));
        }
        let (first, _) = page.subscribe();
        let events = events(&first);
        assert_eq!(events.len(), RECENT_EVENTS + 2);
        assert_eq!(events[1].1["progress"]["batchId"], 10);
        let latest: Vec<&str> = events[RECENT_EVENTS + 1].1["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap())
            .collect();
        // The most recently updated keys, oldest first.
        let expected: Vec<String> = (RECENT_EVENTS + 10 - MAX_KEYS..RECENT_EVENTS + 10)
            .map(|i| format!("K{i}"))
            .collect();
        assert_eq!(latest, expected);
        // A subscriber got every event live, in order.
        let ids: Vec<u64> = std::iter::from_fn(|| live.try_recv().ok())
            .map(|b| events_of(&b)["progress"]["batchId"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (0..RECENT_EVENTS as u64 + 10).collect::<Vec<_>>());
    }
}
