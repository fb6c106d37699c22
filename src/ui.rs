//! `coinstream run`'s HTTP server: `/metrics` (Prometheus' text format) and `/api/progress` (the
//! recent progress records as JSON), both fed by the engine's per-batch [`BatchProgress`], and the
//! live page `/` with its event stream `/api/events` ([`page`]).
//!
//! The engine knows nothing of HTTP or Prometheus: the binary hands [`Ui::record`] to the query's
//! `on_progress` callback, and everything served here is derived from those records.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, Once, PoisonError};

use anyhow::Context;
use engine::progress::BatchProgress;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

pub mod page;
pub mod taps;

/// The first port tried when `--ui` is not given: Spark UI's.
pub const DEFAULT_PORT: u16 = 4040;
/// The last port tried when `--ui` is not given (Spark's default `spark.port.maxRetries` of 16
/// gives the same range), so that several instances on one machine each get one.
pub const LAST_DEFAULT_PORT: u16 = 4056;
/// How many progress records `/api/progress` keeps.
pub const RECENT_RECORDS: usize = 100;

/// Reads one stage's milliseconds from a batch's durations.
type StageMs = fn(&engine::progress::Durations) -> u64;

/// The stages of a batch, as `durationMs` names them, with the field each is read from.
const STAGES: [(&str, StageMs); 6] = [
    ("getBatch", |d| d.get_batch),
    ("walCommit", |d| d.wal_commit),
    ("decode", |d| d.decode),
    ("query", |d| d.query),
    ("sink", |d| d.sink),
    ("commit", |d| d.commit),
];

/// Where the server listens: `--ui ADDR`, `--no-ui`, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiBind {
    /// Neither flag: the first free port of 127.0.0.1:4040..=4056, or no server (with a warning)
    /// when all are taken.
    Default,
    /// `--ui ADDR`: exactly this address; failing to bind it is an error.
    At(SocketAddr),
    /// `--no-ui`: no server.
    Off,
}

/// Binds the listener `bind` asks for; `Ok(None)` means run without a server.
///
/// # Errors
/// An explicit `--ui ADDR` that cannot be bound (taken, not a local address, not permitted).
pub async fn bind(bind: UiBind) -> anyhow::Result<Option<TcpListener>> {
    match bind {
        UiBind::Off => Ok(None),
        UiBind::At(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .with_context(|| format!("--ui {addr}: cannot listen there")),
        UiBind::Default => {
            // Only loopback by default: the endpoints have no authentication, so exposing them
            // beyond this machine takes an explicit `--ui`.
            let mut last = None;
            for port in DEFAULT_PORT..=LAST_DEFAULT_PORT {
                match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                    Ok(listener) => return Ok(Some(listener)),
                    Err(e) => last = Some(e),
                }
            }
            tracing::warn!(
                "No port of 127.0.0.1:{DEFAULT_PORT}-{LAST_DEFAULT_PORT} is free ({}); running \
                 without the UI and metrics (--ui ADDR picks another address).",
                last.map(|e| e.to_string()).unwrap_or_default()
            );
            Ok(None)
        }
    }
}

/// Serves `ui` and `page` on `listener` until the process exits (the task is abandoned with the
/// runtime).
pub fn serve(listener: TcpListener, ui: Arc<Ui>, page: Arc<page::Page>) {
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                // Out of file descriptors and the like: the pipeline goes on; the next accept may
                // succeed once connections close.
                Err(e) => {
                    tracing::debug!("UI: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (ui, page) = (ui.clone(), page.clone());
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (method, path) = (request.method(), request.uri().path());
                let reply = page.answer(method, path).unwrap_or_else(|| {
                    use http_body_util::BodyExt;
                    ui.answer(method, path).map(BodyExt::boxed)
                });
                async move { Ok::<_, Infallible>(reply) }
            });
            tokio::spawn(async move {
                // A client that goes away mid-request is not the pipeline's failure.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}

/// The metrics and the recent progress records of one run.
pub struct Ui {
    registry: Registry,
    input_rows: IntCounter,
    output_rows: IntCounter,
    dead_letters: IntCounterVec,
    rounded_decimals: IntCounter,
    batches: IntCounter,
    batch_duration: HistogramVec,
    watermark: Gauge,
    watermark_shown: Once,
    state_rows: GaugeVec,
    state_memory: GaugeVec,
    dropped_by_watermark: IntCounterVec,
    sink_retries: IntCounterVec,
    source_metrics: GaugeVec,
    offsets_behind_latest: GaugeVec,
    /// The parts `offsets_behind_latest` has a series for: a part the source no longer reads
    /// (its partition moved to another instance) loses its series rather than keep a stale lag.
    backlog_parts: Mutex<BTreeSet<String>>,
    /// Held while a record is applied and while the metrics are gathered: a scrape sees whole
    /// records (the input rows of a batch with its lag), never half of one.
    applying: Mutex<()>,
    /// The last [`RECENT_RECORDS`] records, oldest first, as `--progress json` prints them.
    recent: Mutex<VecDeque<String>>,
}

impl Ui {
    /// Empty metrics (every counter at 0) and no records.
    ///
    /// # Errors
    /// None in practice: Prometheus' registry rejects only malformed or duplicate metric names,
    /// which would be our bug.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("coinstream".to_owned()), None)?;
        let counter = |name: &str, help: &str| -> anyhow::Result<IntCounter> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec = |name: &str, help: &str, label: &str| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge_vec = |name: &str, help: &str, label: &str| -> anyhow::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let ui = Self {
            input_rows: counter("input_rows_total", "Messages read from the source.")?,
            output_rows: counter("output_rows_total", "Rows written to the sink.")?,
            dead_letters: counter_vec(
                "dead_letters_total",
                "Messages sent to the dead-letter output, by what rejected them (decode, \
                 transform <name>).",
                "reason",
            )?,
            rounded_decimals: counter(
                "rounded_decimals_total",
                "Decimal values rounded to their column's scale.",
            )?,
            batches: counter("batches_total", "Micro-batches processed.")?,
            batch_duration: {
                // Whole milliseconds up to a minute: a batch's stages range from 0 ms (an
                // in-memory decode) to tens of seconds (a sink retrying).
                let opts = HistogramOpts::new(
                    "batch_duration_seconds",
                    "Time per batch in each stage (getBatch, walCommit, decode, query, sink, commit).",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0,
                ]);
                let h = HistogramVec::new(opts, &["stage"])?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            watermark: Gauge::with_opts(Opts::new(
                "watermark_seconds",
                "The event-time watermark the last batch used, in seconds since the Unix epoch \
                 (queries with a watermark only).",
            ))?,
            watermark_shown: Once::new(),
            state_rows: gauge_vec(
                "state_rows",
                "Groups held in a stateful operator's state after the last batch.",
                "operator",
            )?,
            state_memory: gauge_vec(
                "state_memory_bytes",
                "An estimate of a stateful operator's state memory after the last batch, in bytes.",
                "operator",
            )?,
            dropped_by_watermark: counter_vec(
                "state_rows_dropped_by_watermark_total",
                "Input rows a stateful operator dropped as older than the watermark.",
                "operator",
            )?,
            sink_retries: counter_vec(
                "sink_retries_total",
                "Writes retried after a transient failure, by sink (output, dead_letters).",
                "sink",
            )?,
            source_metrics: gauge_vec(
                "source_metric",
                "The source's own metrics as its last progress record reports them \
                 (sources[].metrics): counts since it started (messages, reconnects, gaps, \
                 lost_trades, rate_limited...), levels (assigned_partitions, paused_partitions, \
                 buffered_records) and the backlog's \
                 min/max/avgOffsetsBehindLatest.",
                "name",
            )?,
            offsets_behind_latest: gauge_vec(
                "source_offsets_behind_latest",
                "Records available past the last batch's end, per part of the source (a Kafka \
                 topic/partition): the consumer lag, as of the ends the source last read.",
                "partition",
            )?,
            backlog_parts: Mutex::new(BTreeSet::new()),
            applying: Mutex::new(()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_RECORDS)),
            registry,
        };
        Ok(ui)
    }

    /// Adds one batch's progress to the metrics and the recent records.
    pub fn record(&self, p: &BatchProgress) {
        let _whole = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        self.batches.inc();
        self.input_rows.inc_by(p.num_input_rows);
        self.output_rows.inc_by(p.sink.num_output_rows);
        self.rounded_decimals.inc_by(p.num_rounded_decimals);
        for (reason, n) in &p.dead_letters_by_reason {
            self.dead_letters.with_label_values(&[reason]).inc_by(*n);
        }
        for (sink, progress) in [("output", &p.sink), ("dead_letters", &p.dead_letter_sink)] {
            self.sink_retries
                .with_label_values(&[sink])
                .inc_by(progress.num_retries);
        }
        for source in &p.sources {
            for (name, value) in &source.metrics {
                if let Some(value) = value.as_f64() {
                    self.source_metrics.with_label_values(&[name]).set(value);
                }
            }
        }
        self.record_backlog(p);
        for (stage, ms) in STAGES {
            self.batch_duration
                .with_label_values(&[stage])
                .observe(ms(&p.duration_ms) as f64 / 1000.0);
        }
        if let Some(w) = p
            .event_time
            .get("watermark")
            .and_then(|w| chrono::DateTime::parse_from_rfc3339(w).ok())
        {
            // Registered with the first watermark: a query without one shows no series rather
            // than a watermark at 1970.
            self.watermark_shown.call_once(|| {
                if let Err(e) = self.registry.register(Box::new(self.watermark.clone())) {
                    tracing::debug!("UI: registering the watermark: {e}");
                }
            });
            self.watermark.set(w.timestamp_millis() as f64 / 1000.0);
        }
        for op in &p.state_operators {
            let name = [op.operator_name.as_str()];
            self.state_rows
                .with_label_values(&name)
                .set(op.num_rows_total as f64);
            self.state_memory
                .with_label_values(&name)
                .set(op.memory_used_bytes as f64);
            self.dropped_by_watermark
                .with_label_values(&name)
                .inc_by(op.num_rows_dropped_by_watermark);
        }
        // A panic elsewhere while holding the lock leaves a whole deque: keep serving it.
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_RECORDS {
            recent.pop_front();
        }
        recent.push_back(p.json_line());
    }

    /// Sets each part's lag to the record's and drops the series of parts no longer listed.
    fn record_backlog(&self, p: &BatchProgress) {
        let mut parts = self
            .backlog_parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now: BTreeSet<String> = p
            .sources
            .iter()
            .flat_map(|s| s.offsets_behind_latest.keys().cloned())
            .collect();
        for gone in parts.difference(&now) {
            // Only fails for a series that does not exist, which `parts` rules out.
            let _ = self.offsets_behind_latest.remove_label_values(&[gone]);
        }
        for source in &p.sources {
            for (part, lag) in &source.offsets_behind_latest {
                self.offsets_behind_latest
                    .with_label_values(&[part])
                    .set(*lag as f64);
            }
        }
        *parts = now;
    }

    /// The metrics in Prometheus' text exposition format (0.0.4).
    pub fn metrics_text(&self) -> String {
        let gathered = {
            let _whole = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
            self.registry.gather()
        };
        let mut text = String::new();
        // Encoding fails only on a metric family without metrics, which the registry never
        // gathers; an error leaves what was encoded.
        if let Err(e) = TextEncoder::new().encode_utf8(&gathered, &mut text) {
            tracing::debug!("UI: encoding the metrics: {e}");
        }
        text
    }

    /// The recent progress records as a JSON array, oldest first.
    pub fn progress_json(&self) -> String {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let mut json = String::from("[");
        for (i, record) in recent.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(record);
        }
        json.push(']');
        json
    }

    fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match (method, path) {
            (&Method::GET, "/metrics") => (
                StatusCode::OK,
                TextEncoder::new().format_type().to_owned() + "; charset=utf-8",
                self.metrics_text(),
            ),
            (&Method::GET, "/api/progress") => (
                StatusCode::OK,
                "application/json".to_owned(),
                self.progress_json(),
            ),
            (&Method::GET, _) => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8".to_owned(),
                "not found: the endpoints are /, /api/events, /metrics and /api/progress\n"
                    .to_owned(),
            ),
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8".to_owned(),
                "only GET\n".to_owned(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use engine::position::SourceOffset;
    use engine::progress::{Durations, SinkProgress, SourceProgress, StateOperatorProgress};

    use super::*;

    fn progress(batch_id: u64) -> BatchProgress {
        let (metrics, offsets_behind_latest) = SourceProgress::source_metrics(
            vec![("reconnects", batch_id), ("assigned_partitions", 2)],
            vec![
                ("t/0".to_owned(), 5u64.saturating_sub(batch_id)),
                ("t/1".to_owned(), 2),
            ],
        );
        BatchProgress {
            batch_id,
            timestamp: "2026-12-01T12:00:00.000Z".to_owned(),
            num_input_rows: 10 + batch_id,
            input_rows_per_second: 0.0,
            processed_rows_per_second: 0.0,
            num_dead_letters: 3,
            dead_letters_by_reason: BTreeMap::from([
                ("decode".to_owned(), 2),
                ("transform profit".to_owned(), 1),
            ]),
            num_rounded_decimals: 1,
            duration_ms: Durations {
                get_batch: 1,
                wal_commit: 0,
                decode: 2,
                query: 30,
                sink: 400,
                commit: 5,
                total: 438,
            },
            sources: vec![SourceProgress {
                description: "test".to_owned(),
                start_offset: SourceOffset::default(),
                end_offset: SourceOffset::default(),
                num_input_rows: 10 + batch_id,
                metrics,
                offsets_behind_latest,
            }],
            sink: SinkProgress {
                description: "test".to_owned(),
                num_output_rows: 7,
                num_retries: batch_id + 1,
            },
            dead_letter_sink: SinkProgress {
                description: "test dead letters".to_owned(),
                num_output_rows: 3,
                num_retries: 4,
            },
            state_operators: vec![StateOperatorProgress {
                operator_name: "stateStoreSave".to_owned(),
                num_rows_total: 40 + batch_id,
                memory_used_bytes: 4096,
                num_rows_dropped_by_watermark: 2,
                ..Default::default()
            }],
            event_time: BTreeMap::from([(
                "watermark".to_owned(),
                format!("2026-12-01T12:00:0{batch_id}.500Z"),
            )]),
        }
    }

    /// The value of the sample `series` (name and labels as the text format writes them).
    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// A UI that recorded the progress records of batches `ids`, in order.
    fn recorded(ids: std::ops::Range<u64>) -> Ui {
        let ui = Ui::new().unwrap();
        for id in ids {
            ui.record(&progress(id));
        }
        ui
    }

    /// Asserts that each `(series, value)` of `expected` is a sample of `text`.
    fn assert_samples(text: &str, expected: &[(&str, f64)]) {
        for &(series, value) in expected {
            assert_eq!(sample(text, series), value, "{series}");
        }
    }

    #[test]
    fn metrics_add_up_the_records_and_gauges_keep_the_last() {
        let ui = recorded(0..2);
        assert_samples(
            &ui.metrics_text(),
            &[
                ("coinstream_batches_total", 2.0),
                ("coinstream_input_rows_total", 21.0),
                ("coinstream_output_rows_total", 14.0),
                ("coinstream_rounded_decimals_total", 2.0),
                (r#"coinstream_dead_letters_total{reason="decode"}"#, 4.0),
                (
                    r#"coinstream_dead_letters_total{reason="transform profit"}"#,
                    2.0,
                ),
                // 0.4 s of sink per batch: above the 0.25 s bucket, within the 0.5 s one.
                (
                    r#"coinstream_batch_duration_seconds_bucket{stage="sink",le="0.25"}"#,
                    0.0,
                ),
                (
                    r#"coinstream_batch_duration_seconds_bucket{stage="sink",le="0.5"}"#,
                    2.0,
                ),
                (
                    r#"coinstream_batch_duration_seconds_sum{stage="query"}"#,
                    0.06,
                ),
                (
                    r#"coinstream_batch_duration_seconds_count{stage="getBatch"}"#,
                    2.0,
                ),
                // 2026-12-01T12:00:01.5Z, the second batch's.
                ("coinstream_watermark_seconds", 1_796_126_401.5),
                (r#"coinstream_state_rows{operator="stateStoreSave"}"#, 41.0),
                (
                    r#"coinstream_state_memory_bytes{operator="stateStoreSave"}"#,
                    4096.0,
                ),
                (
                    r#"coinstream_state_rows_dropped_by_watermark_total{operator="stateStoreSave"}"#,
                    4.0,
                ),
            ],
        );
    }

    #[test]
    fn retries_add_up_and_source_metrics_and_lag_keep_the_last() {
        let ui = recorded(0..2);
        assert_samples(
            &ui.metrics_text(),
            &[
                (r#"coinstream_sink_retries_total{sink="output"}"#, 3.0),
                (r#"coinstream_sink_retries_total{sink="dead_letters"}"#, 8.0),
                (r#"coinstream_source_metric{name="reconnects"}"#, 1.0),
                (
                    r#"coinstream_source_metric{name="assigned_partitions"}"#,
                    2.0,
                ),
                // Batch 1 leaves 4 and 2 behind: Spark's summary over the parts.
                (
                    r#"coinstream_source_metric{name="maxOffsetsBehindLatest"}"#,
                    4.0,
                ),
                (
                    r#"coinstream_source_metric{name="avgOffsetsBehindLatest"}"#,
                    3.0,
                ),
                (
                    r#"coinstream_source_offsets_behind_latest{partition="t/0"}"#,
                    4.0,
                ),
                (
                    r#"coinstream_source_offsets_behind_latest{partition="t/1"}"#,
                    2.0,
                ),
            ],
        );
        // t/1 moved to another instance: its series goes, t/0's follows the record.
        let mut moved = progress(2);
        moved.sources[0].offsets_behind_latest.remove("t/1");
        ui.record(&moved);
        let text = ui.metrics_text();
        assert!(!text.contains(r#"partition="t/1""#), "{text}");
        assert_eq!(
            sample(
                &text,
                r#"coinstream_source_offsets_behind_latest{partition="t/0"}"#
            ),
            3.0
        );
    }

    #[test]
    fn no_watermark_series_before_a_watermark() {
        let ui = Ui::new().unwrap();
        let mut p = progress(0);
        p.event_time.clear();
        ui.record(&p);
        assert!(!ui.metrics_text().contains("coinstream_watermark_seconds"));
        ui.record(&progress(3));
        assert_eq!(
            sample(&ui.metrics_text(), "coinstream_watermark_seconds"),
            1_796_126_403.5
        );
    }

    #[test]
    fn progress_keeps_the_last_hundred_records_oldest_first() {
        let ui = Ui::new().unwrap();
        assert_eq!(ui.progress_json(), "[]");
        for id in 0..(RECENT_RECORDS as u64 + 5) {
            ui.record(&progress(id));
        }
        let records: Vec<serde_json::Value> = serde_json::from_str(&ui.progress_json()).unwrap();
        let ids: Vec<u64> = records
            .iter()
            .map(|r| r["batchId"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (5..RECENT_RECORDS as u64 + 5).collect::<Vec<_>>());
        assert_eq!(
            records[0],
            serde_json::from_str::<serde_json::Value>(&progress(5).json_line()).unwrap()
        );
    }

    #[tokio::test]
    async fn default_bind_moves_past_a_taken_port() {
        // Whatever else runs on this machine, the default range ends either bound or empty
        // (never an error), and a port it returns is one of the range on loopback.
        let first = bind(UiBind::Default).await.unwrap();
        let second = bind(UiBind::Default).await.unwrap();
        for listener in [&first, &second].into_iter().flatten() {
            let addr = listener.local_addr().unwrap();
            assert!(addr.ip().is_loopback(), "{addr}");
            assert!((DEFAULT_PORT..=LAST_DEFAULT_PORT).contains(&addr.port()));
        }
        if let (Some(a), Some(b)) = (&first, &second) {
            assert_ne!(a.local_addr().unwrap(), b.local_addr().unwrap());
        }
    }

    #[tokio::test]
    async fn an_explicit_address_that_is_taken_is_an_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(UiBind::At(addr)).await.unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("--ui {addr}: cannot listen there")),
            "{err:#}"
        );
        assert!(bind(UiBind::Off).await.unwrap().is_none());
    }
}
