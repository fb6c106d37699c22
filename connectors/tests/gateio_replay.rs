//! The Gate.io candle poller and the engine source on top of it against testkit's Gate.io stand-in
//! (REST v4's exact formats, `../shared/exchange-formats.md` §3): rows of strings in `[t, quote
//! volume, close, high, low, open, base volume, closed]` order, a 429 with rate-limit headers, 5xx
//! answers with and without Gate.io's error body, overlapping pages and an open window, an API
//! that keeps failing and a closed loopback port (retries, giving up, recovering). The
//! backfill test publishes through the real Kafka (`scripts/services.sh up`) and reads the topic
//! back; a missing broker fails it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use connectors::common::counters::CounterSet;
use connectors::gateio::candles::CandleRecord;
use connectors::gateio::config::{GateioConfig, Settings};
use connectors::gateio::poller::{self, Counters};
use connectors::gateio::source::GateioSource;
use engine::{Poll, PollLimits, Source, SourceBatch, StartRequest};
use testkit::gateio::{Handler, Reply, RestServer, Seen, now_secs, row, rows};
use tokio::sync::{mpsc, watch};

mod support;
use support::fresh_topic_producer;

/// Serves `handler`'s answers on testkit's Gate.io stand-in.
async fn serve(handler: Arc<Handler>) -> RestServer {
    RestServer::serve(move |n, seen| handler(n, seen)).await
}

/// A published candle's window start, in unix seconds.
fn start_secs(c: &CandleRecord) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&c.window_start)
        .unwrap()
        .timestamp()
}

fn query_i64(seen: &Seen, key: &str) -> i64 {
    seen.query_i64(key)
}

fn settings(
    base: &str,
    pairs: &[&str],
    from: Option<i64>,
    to: Option<i64>,
    once: bool,
) -> Settings {
    let mut config = GateioConfig::new(pairs.iter().map(|p| (*p).to_owned()).collect());
    config.base_url = base.to_owned();
    config.from_secs = from;
    config.to_secs = to;
    config.once = once;
    config.retry_backoff_initial_ms = 50;
    config.retry_backoff_max_ms = 200;
    config.request_timeout_ms = 5_000;
    config.validate().unwrap()
}

/// What a poller run that ends on its own (`once`, or the end of a backfill) left behind.
struct Ended {
    /// What `poller::run` returned: the last published window per pair, or the error.
    result: engine::Result<BTreeMap<String, i64>>,
    /// The candles it sent, in the order sent.
    candles: Vec<CandleRecord>,
    counters: Arc<Counters>,
}

/// Runs the poller from `resume` until it ends on its own, taking its candles as it sends them.
async fn run_to_end(settings: Settings, resume: BTreeMap<String, i64>) -> Ended {
    let (tx, mut rx) = mpsc::channel(100);
    let (_stop, shutdown) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let take = async {
        let mut candles = Vec::new();
        while let Some(c) = rx.recv().await {
            candles.push(c);
        }
        candles
    };
    // The run drops its sender when it ends, which ends `take`.
    let (result, candles) = tokio::join!(
        poller::run(settings, resume, tx, shutdown, counters.clone()),
        take
    );
    Ended {
        result,
        candles,
        counters,
    }
}

/// One live poll (`once`, no backfill) of `pairs` on the stand-in at `base`, resuming after the
/// windows in `resume`.
async fn one_live_poll(base: &str, pairs: &[&str], resume: BTreeMap<String, i64>) -> Ended {
    run_to_end(settings(base, pairs, None, None, true), resume).await
}

/// A backfill of `windows` one-minute windows from 2026-05-28T20:26:00Z: its first and last
/// window start (unix seconds).
fn minute_backfill(windows: i64) -> (i64, i64) {
    let from = 1_780_000_000 / 60 * 60;
    (from, from + (windows - 1) * 60)
}

// ---- tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_backfill_through_429_and_errors_publishes_every_closed_window_once() {
    let secs = 60;
    let windows = 2_500;
    let (from, to) = minute_backfill(windows);
    let handler: Arc<Handler> = Arc::new(move |n, seen| {
        let (f, t) = (query_i64(seen, "from"), query_i64(seen, "to"));
        if seen.path != "/api/v4/spot/candlesticks"
            || seen.query["interval"] != "1m"
            || seen.query.contains_key("limit")
        {
            return Reply {
                status: 400,
                headers: vec![],
                body: r#"{"label":"INVALID_PARAM_VALUE","message":"bad request"}"#.into(),
            };
        }
        if (t - f) / secs + 1 > 1000 {
            return Reply {
                status: 400,
                headers: vec![],
                body: r#"{"label":"INVALID_PARAM_VALUE","message":"too many points requested"}"#
                    .into(),
            };
        }
        match n {
            1 => Reply {
                status: 429,
                headers: vec![
                    ("X-Gate-RateLimit-Requests-Remain".into(), "0".into()),
                    ("X-Gate-RateLimit-Limit".into(), "200".into()),
                    (
                        "X-Gate-RateLimit-Reset-Timestamp".into(),
                        (now_secs() + 2).to_string(),
                    ),
                ],
                body: r#"{"label":"TOO_MANY_REQUESTS","message":"Request Rate limit Exceeded"}"#
                    .into(),
            },
            3 => Reply {
                status: 500,
                headers: vec![],
                body: r#"{"label":"SERVER_ERROR","message":"Internal server error"}"#.into(),
            },
            4 => Reply {
                status: 502,
                headers: vec![],
                body: "<html><body>502 Bad Gateway</body></html>".into(),
            },
            _ => {
                // Every page also repeats five windows before it (already published), holds a
                // broken row, and the last page shows the window after `to`, still open.
                let mut extra = vec![row(f - 5 * secs, true), r#"["x","1"]"#.to_owned()];
                if t == to {
                    extra.push(row(to + secs, false));
                }
                Reply::json(rows(f - 5 * secs, t, secs, &extra))
            }
        }
    });
    let server = serve(handler).await;

    let (topic, producer) = fresh_topic_producer("gateio_replay").await;
    let counters = Arc::new(Counters::default());
    let (tx, mut rx) = mpsc::channel(1_000);
    let (_stop, shutdown) = watch::channel(false);
    let poll = tokio::spawn(poller::run(
        settings(
            &server.base,
            &["BTC_USDT", "ETH_USDT"],
            Some(from),
            Some(to),
            false,
        ),
        BTreeMap::new(),
        tx,
        shutdown,
        counters.clone(),
    ));
    // Published as the candles arrive, in batches of what has arrived, each acknowledged before
    // the next is read (as the engine's Kafka sink does per micro-batch).
    let mut published = 0u64;
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 500).await > 0 {
        let candles = batch.drain(..);
        let sent = producer
            .send_all(candles.map(|c: CandleRecord| (c.currency_pair.clone(), c.to_json())))
            .await
            .unwrap();
        counters.published.fetch_add(sent, Ordering::Relaxed);
        published += sent;
    }
    let ended_at = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the bounded backfill ends by itself")
        .unwrap()
        .unwrap();
    assert_eq!(
        ended_at,
        BTreeMap::from([("BTC_USDT".to_owned(), to), ("ETH_USDT".to_owned(), to)]),
        "the last window published per pair"
    );
    producer.flush().unwrap();
    assert_eq!(published, 2 * windows as u64, "{:?}", counters.snapshot());

    let on_kafka: BTreeMap<String, Vec<CandleRecord>> =
        testkit::kafka::read_topic_by_key(&topic, 2 * windows as usize, Duration::from_secs(2))
            .await;
    assert_eq!(on_kafka.len(), 2);
    for pair in ["BTC_USDT", "ETH_USDT"] {
        let starts: Vec<String> = on_kafka[pair]
            .iter()
            .map(|c| c.window_start.clone())
            .collect();
        let expected: Vec<String> = (0..windows)
            .map(|i| {
                chrono::DateTime::from_timestamp(from + i * secs, 0)
                    .unwrap()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
            .collect();
        assert_eq!(starts, expected, "{pair}: every window once, in order");
    }
    // Read by index, not as OHLC.
    let first = &on_kafka["BTC_USDT"][0];
    let p = 60_000 + from % 997;
    assert_eq!(
        (
            first.ohlcv.open.as_str(),
            first.ohlcv.high.as_str(),
            first.ohlcv.low.as_str(),
            first.ohlcv.close.as_str()
        ),
        (
            format!("{}.25", p - 1).as_str(),
            format!("{}.9", p + 2).as_str(),
            format!("{}", p - 3).as_str(),
            format!("{p}.1").as_str()
        )
    );
    assert_eq!(first.ohlcv.volume_quote, format!("{}.5", p * 3));
    assert_eq!(first.interval, "1m");

    let seen = server.seen.lock().unwrap().clone();
    // 3 pages per pair + the 429, the 500 and the 502 retried.
    assert_eq!(seen.len(), 6 + 3, "{seen:#?}");
    assert!(
        seen[2].at - seen[1].at >= Duration::from_millis(900),
        "the 429 was waited out until its reset: {:?}",
        seen[2].at - seen[1].at
    );
    let c: BTreeMap<_, _> = counters.snapshot().into_iter().collect();
    assert_eq!((c["rate_limited"], c["retries"]), (1, 2), "{c:?}");
    assert_eq!(
        c["open_windows"], 2,
        "the open window after `to`, once per pair"
    );
    assert_eq!(
        c["errors"],
        2 * 3 + 2,
        "a broken row per page, the 500 and the 502"
    );
    assert_eq!(c["gaps"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_fails_the_poll_with_its_label_and_message() {
    let handler: Arc<Handler> = Arc::new(|_, _| Reply {
        status: 400,
        headers: vec![],
        body: r#"{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair FOO_BAR"}"#
            .into(),
    });
    let server = serve(handler).await;
    let ended = one_live_poll(&server.base, &["FOO_BAR"], BTreeMap::new()).await;
    let err = ended.result.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("400 Bad Request INVALID_CURRENCY_PAIR: Invalid currency pair FOO_BAR"),
        "{text}"
    );
    assert!(
        !err.is_transient(),
        "a bad pair does not go away by retrying"
    );
    assert_eq!(ended.counters.get("requests"), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_live_poll_publishes_only_closed_windows() {
    let secs = 60;
    let handler: Arc<Handler> = Arc::new(move |_, seen| {
        let (f, t) = (query_i64(seen, "from"), query_i64(seen, "to"));
        // The current window is open; legacy 7-element rows are understood too.
        let current = t.div_euclid(secs) * secs;
        let legacy = format!(r#"["{}","1","2","3","1","2","0.5"]"#, current - 2 * secs);
        let body = rows(
            f,
            current - 3 * secs,
            secs,
            &[legacy, row(current - secs, true), row(current, false)],
        );
        Reply::json(body)
    });
    let server = serve(handler).await;
    let Ended {
        result,
        candles: got,
        counters,
    } = one_live_poll(&server.base, &["BTC_USDT"], BTreeMap::new()).await;
    result.unwrap();
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one poll");
    let (f, t) = (query_i64(&seen[0], "from"), query_i64(&seen[0], "to"));
    let current = t.div_euclid(secs) * secs;
    assert_eq!(
        f,
        current - 100 * secs,
        "the first poll reaches back 100 windows"
    );
    assert_eq!(got.len(), 100, "{:?}", counters.snapshot());
    assert_eq!(
        got.last().unwrap().window_start,
        chrono::DateTime::from_timestamp(current - secs, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "the newest closed window; the open one is not published"
    );
    assert_eq!(
        got[got.len() - 2].ohlcv.volume_base.as_deref(),
        Some("0.5"),
        "the legacy row"
    );
    assert_eq!(counters.get("open_windows"), 1);
    assert_eq!(counters.get("legacy_rows"), 1);
}

/// The schedule that replaces the seeds' Airflow runs: with 1-second windows it polls after
/// every boundary, polls again while the window that just ended is not closed yet (the server
/// closes a window 250 ms after it ends, as Gate.io marks it a moment late), and publishes every
/// closed window once, in order, with no gap, until it is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_schedule_publishes_every_window_once_as_it_closes() {
    let now_ms = || chrono::Utc::now().timestamp_millis();
    let handler: Arc<Handler> = Arc::new(move |_, seen| {
        let (f, t) = (query_i64(seen, "from"), query_i64(seen, "to"));
        let at = now_ms();
        let body: Vec<String> = (f..=t)
            .filter(|s| s * 1000 <= at)
            .map(|s| row(s, (s + 1) * 1000 + 250 <= at))
            .collect();
        Reply::json(format!("[{}]", body.join(",")))
    });
    let server = serve(handler).await;
    let mut config = GateioConfig::new(vec!["BTC_USDT".into()]);
    config.base_url = server.base.clone();
    config.interval = "1s".into();
    config.lookback_windows = 5;
    config.poll_delay_ms = 100;
    config.request_timeout_ms = 5_000;
    let settings = config.validate().unwrap();
    let (tx, mut rx) = mpsc::channel(1_000);
    let (stop, shutdown) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let started = now_secs();
    let schedule = tokio::spawn(poller::run(
        settings,
        BTreeMap::new(),
        tx,
        shutdown,
        counters.clone(),
    ));

    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_millis(4_500);
    while let Ok(Some(c)) = tokio::time::timeout_at(until.into(), rx.recv()).await {
        got.push(c);
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), schedule)
        .await
        .expect("the schedule stops when asked")
        .unwrap()
        .unwrap();
    let ended = now_secs();

    let starts: Vec<i64> = got.iter().map(start_secs).collect();
    let seen = server.seen.lock().unwrap().clone();
    let first_from = query_i64(&seen[0], "from");
    assert_eq!(starts.first(), Some(&first_from), "{starts:?}");
    assert!(
        starts.windows(2).all(|w| w[1] == w[0] + 1),
        "every window once, in order, no gap: {starts:?}"
    );
    let last = *starts.last().unwrap();
    assert!(
        last >= started + 2 && last < ended,
        "windows that closed while it ran are published, open ones are not: last {last}, ran {started}..{ended}"
    );
    // One poll at start, one after each boundary, and at least one more that came back for a
    // window still open 100 ms after its end.
    let boundaries = (ended - started) as usize;
    assert!(
        seen.len() > boundaries + 1,
        "{} requests over {boundaries} boundaries",
        seen.len()
    );
    assert!(
        counters.get("open_windows") > 0,
        "open windows are counted, not published: {:?}",
        counters.snapshot()
    );
    assert_eq!(counters.get("duplicates"), 0, "{:?}", counters.snapshot());
}

/// A run given the last window a previous run published (the source's checkpoint position)
/// starts right after it, even further back than `lookback_windows`, and publishes nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_poll_starts_right_after_the_last_published_window() {
    let secs = 60;
    let handler: Arc<Handler> = Arc::new(move |_, seen| {
        let (f, t) = (query_i64(seen, "from"), query_i64(seen, "to"));
        let now = now_secs();
        let body: Vec<String> = (f.div_euclid(secs)..=t.div_euclid(secs))
            .map(|i| i * secs)
            .filter(|s| *s >= f && *s <= now)
            .map(|s| row(s, s + secs <= now))
            .collect();
        Reply::json(format!("[{}]", body.join(",")))
    });
    let server = serve(handler).await;
    let current = now_secs().div_euclid(secs) * secs;
    let last = current - 300 * secs;
    let ended = one_live_poll(
        &server.base,
        &["BTC_USDT"],
        BTreeMap::from([("BTC_USDT".to_owned(), last)]),
    )
    .await;
    let ended_at = ended.result.unwrap();
    let starts: Vec<i64> = ended.candles.iter().map(start_secs).collect();
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(query_i64(&seen[0], "from"), last + secs, "resumes after it");
    // The minute may have turned during the poll.
    let newest = *starts.last().unwrap();
    assert!(newest == current - secs || newest == current, "{newest}");
    let expected: Vec<i64> = (1..=(newest - last) / secs)
        .map(|i| last + i * secs)
        .collect();
    assert_eq!(
        starts, expected,
        "each window after the last published one, once"
    );
    assert_eq!(ended_at, BTreeMap::from([("BTC_USDT".to_owned(), newest)]));
}

// ---- hostile input: unaligned ranges, refused pairs, answers of an unknown shape ---------------

/// A stand-in for `GET /spot/candlesticks` as `../shared/cases/gateio-unaligned-from-gap/
/// http_gate.py`: more than 1000 window starts in `from..=to` (both ends counted) or a `from`
/// more than 10000 intervals ago is a 400 `INVALID_PARAM_VALUE`; otherwise one row per window
/// start in the range, closed unless it holds `now`.
fn gate_limits(n: usize, seen: &Seen) -> Reply {
    let _ = n;
    let secs = match seen.query["interval"].as_str() {
        "1s" => 1,
        "10s" => 10,
        "1m" => 60,
        "5m" => 300,
        "15m" => 900,
        "30m" => 1_800,
        "1h" => 3_600,
        "4h" => 14_400,
        "8h" => 28_800,
        "1d" => 86_400,
        _ => 604_800,
    };
    let (from, to) = (query_i64(seen, "from"), query_i64(seen, "to"));
    let now = now_secs();
    let first = (from + secs - 1).div_euclid(secs) * secs;
    let last = to.div_euclid(secs) * secs;
    let points = if last >= first {
        (last - first) / secs + 1
    } else {
        0
    };
    let refuse = |message: &str| Reply {
        status: 400,
        headers: vec![],
        body: format!(r#"{{"label":"INVALID_PARAM_VALUE","message":"{message}"}}"#),
    };
    if points > 1000 {
        return refuse(
            "Candlestick range too broad. Maximum 1000 data points are allowed per request",
        );
    }
    if from < now.div_euclid(secs) * secs - 10_000 * secs {
        return refuse("Candlestick too long ago. Maximum 10000 points ago are allowed");
    }
    let rows: Vec<String> = (0..points)
        .map(|i| first + i * secs)
        .map(|start| row(start, start + secs <= now))
        .collect();
    Reply::json(format!("[{}]", rows.join(",")))
}

/// gateio-unaligned-from-gap: a backfill from a `from` that is not on an interval boundary
/// publishes every window from the first at or after `from` to the last closed one, no gaps, in
/// pages the API accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_from_an_unaligned_from_skips_no_window() {
    let server = serve(Arc::new(gate_limits)).await;
    // (interval, its seconds, windows back, offset into the window, bounded by `to`)
    let cases: [(&str, i64, i64, i64, bool); 6] = [
        ("1m", 60, 2_500, 30, false),
        ("1m", 60, 2_500, 1, true),
        ("1m", 60, 3_100, 59, true),
        ("5m", 300, 2_200, 7, true),
        ("10s", 10, 2_050, 3, false),
        ("1h", 3_600, 1_001, 1_799, true),
    ];
    for (interval, secs, back, offset, bounded) in cases {
        let requests_before = server.seen.lock().unwrap().len();
        let current = now_secs().div_euclid(secs) * secs;
        let from = current - back * secs + offset;
        // Bounded: up to a `to` inside a window; otherwise up to now.
        let to = bounded.then_some(current - 5 * secs + secs / 2);
        let mut config = GateioConfig::new(vec!["BTC_USDT".into()]);
        config.base_url = server.base.clone();
        config.interval = interval.into();
        config.from_secs = Some(from);
        config.to_secs = to;
        config.once = true;
        config.request_timeout_ms = 5_000;
        let Ended {
            result,
            candles,
            counters,
        } = run_to_end(config.validate().unwrap(), BTreeMap::new()).await;
        let ended = result.unwrap_or_else(|e| panic!("{interval} +{offset}s: {e}"));
        let starts: Vec<i64> = candles.iter().map(start_secs).collect();
        let first = current - back * secs + secs;
        let last = match to {
            Some(to) => to.div_euclid(secs) * secs,
            // The minute may have turned while it ran.
            None => *starts.last().unwrap(),
        };
        if to.is_none() {
            assert!(
                last == current - secs || last == current,
                "{interval}: the last closed window, got {last} (current {current})"
            );
        }
        let expected: Vec<i64> = (0..=(last - first) / secs)
            .map(|i| first + i * secs)
            .collect();
        assert_eq!(
            starts.len(),
            expected.len(),
            "{interval} from +{offset}s: {} windows, {} expected; counters {:?}",
            starts.len(),
            expected.len(),
            counters.snapshot()
        );
        assert_eq!(
            starts, expected,
            "{interval} from +{offset}s: every window once, no gap"
        );
        assert_eq!(ended, BTreeMap::from([("BTC_USDT".to_owned(), last)]));
        assert_eq!((counters.get("gaps"), counters.get("errors")), (0, 0));
        let seen = server.seen.lock().unwrap()[requests_before..].to_vec();
        assert_eq!(
            seen.len() as i64,
            (expected.len() as i64 + 999) / 1000,
            "{interval}: full pages of 1000 windows"
        );
        for s in &seen {
            let (f, t) = (query_i64(s, "from"), query_i64(s, "to"));
            assert_eq!(
                f.rem_euclid(secs),
                0,
                "{interval}: pages start on a boundary"
            );
            assert!((t - f) / secs < 1000, "{interval}: at most 1000 points");
        }
    }
}

/// A pair Gate.io refuses (unknown or delisted) is dropped with an error naming it; the other
/// pairs go on, and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_the_api_refuses_is_dropped_and_the_others_go_on() {
    let handler: Arc<Handler> = Arc::new(|n, seen| {
        if seen.query["currency_pair"] == "FOO_BAR" {
            return Reply {
                status: 400,
                headers: vec![],
                body:
                    r#"{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair FOO_BAR"}"#
                        .into(),
            };
        }
        gate_limits(n, seen)
    });
    let server = serve(handler).await;
    let secs = 60;
    let current = now_secs().div_euclid(secs) * secs;
    let from = current - 1_500 * secs;
    let to = current - 11 * secs;
    let run = run_to_end(
        settings(
            &server.base,
            &["BTC_USDT", "FOO_BAR", "ETH_USDT"],
            Some(from),
            Some(to),
            false,
        ),
        BTreeMap::new(),
    )
    .await;
    let ended = run.result.unwrap();
    let mut per_pair: BTreeMap<String, usize> = BTreeMap::new();
    for c in run.candles {
        *per_pair.entry(c.currency_pair).or_default() += 1;
    }
    assert_eq!(
        per_pair,
        BTreeMap::from([
            ("BTC_USDT".to_owned(), 1_490),
            ("ETH_USDT".to_owned(), 1_490)
        ])
    );
    assert_eq!(
        ended.keys().collect::<Vec<_>>(),
        ["BTC_USDT", "ETH_USDT"],
        "the refused pair published nothing"
    );
    let asked_foo = server
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.query["currency_pair"] == "FOO_BAR")
        .count();
    assert_eq!(asked_foo, 1, "asked once, not once per page nor retried");
}

/// A run that received rows but could use none of them (a shape it does not know, prices of
/// zero) fails with the reason, instead of succeeding with nothing published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_every_row_is_unusable_fails_with_the_reason() {
    for (body, reason) in [
        (
            r#"[{"t":"1717246800","o":"1","c":"1"},{"t":"1717246860","o":"1","c":"1"}]"#,
            "is not an array",
        ),
        (
            r#"[["1717246800","1","0","0","0","0","0.5","true"]]"#,
            "close \"0\" is not greater than zero",
        ),
    ] {
        let handler: Arc<Handler> = Arc::new(move |_, _| Reply::json(body.to_owned()));
        let server = serve(handler).await;
        let ended = one_live_poll(&server.base, &["BTC_USDT"], BTreeMap::new()).await;
        let err = ended.result.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("rows received could be used") && text.contains(reason),
            "{text}"
        );
        assert!(!err.is_transient());
        assert!(ended.candles.is_empty(), "nothing published");
        assert!(ended.counters.get("errors") > 0);
    }
}

// ---- the engine source: its position in the checkpoint ----------------------------------------

/// The next batch of `source` (waiting through idle polls), or `None` once it is exhausted.
async fn next_batch(source: &mut GateioSource) -> Option<SourceBatch> {
    let limits = PollLimits {
        max_records: 100,
        max_wait: Duration::from_millis(500),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match source.poll(limits).await.unwrap() {
            Poll::Batch(b) => return Some(b),
            Poll::Idle => {}
            Poll::Exhausted => return None,
        }
    }
    panic!("no batch within 30 s");
}

/// `(pair, window start)` of each record, and the record without its `ingest_time` (the only
/// field a fetch at another time may change).
fn windows_of(batch: &SourceBatch) -> Vec<((String, i64), CandleRecord)> {
    batch
        .records
        .iter()
        .map(|r| {
            let mut c: CandleRecord = serde_json::from_slice(&r.payload).unwrap();
            let window = r.position.offset;
            assert_eq!(window, start_secs(&c), "the position is the window start");
            c.ingest_time.clear();
            ((c.currency_pair.clone(), window), c)
        })
        .collect()
}

/// A Gate.io source stopped after three committed batches and a fourth planned but not
/// committed (a crash) starts again from the engine's checkpoint: it replays exactly the
/// uncommitted batch (the same windows and values, fetched again), then goes on right after it.
/// Over both runs every window of the backfill is published once, none twice, none missing, and
/// the window the API has no candle for (a minute without trades) stays a gap in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_resumes_from_its_checkpoint_position_without_duplicates_or_gaps() {
    let secs = 60;
    let windows = 450;
    let (from, to) = minute_backfill(windows);
    let quiet = from + 137 * secs;
    let handler: Arc<Handler> = Arc::new(move |_, seen| {
        let (f, t) = (query_i64(seen, "from"), query_i64(seen, "to"));
        let body: Vec<String> = (f.div_euclid(secs)..=t.div_euclid(secs))
            .map(|i| i * secs)
            .filter(|s| *s != quiet)
            .map(|s| row(s, true))
            .collect();
        Reply::json(format!("[{}]", body.join(",")))
    });
    let server = serve(handler).await;
    let config = || {
        let mut c = GateioConfig::new(vec!["BTC_USDT".into(), "ETH_USDT".into()]);
        c.base_url = server.base.clone();
        c.from_secs = Some(from);
        c.to_secs = Some(to);
        c
    };

    // The first run: three batches committed, the fourth planned, then a crash.
    let mut published = Vec::new();
    let mut first = GateioSource::new(config()).unwrap();
    first.start(StartRequest::default()).await.unwrap();
    let mut committed = None;
    for _ in 0..3 {
        let batch = next_batch(&mut first).await.unwrap();
        published.extend(windows_of(&batch));
        first.commit(&batch.end).await.unwrap();
        committed = Some(batch.end);
    }
    let planned = next_batch(&mut first).await.unwrap();
    drop(first);

    // The restart, from the checkpoint: the planned batch again, exactly.
    let mut second = GateioSource::new(config()).unwrap();
    second
        .start(StartRequest {
            committed: committed.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let replayed = second.fetch_range(&planned.range()).await.unwrap();
    let (replayed_windows, planned_windows) = (windows_of(&replayed), windows_of(&planned));
    assert_eq!(replayed_windows, planned_windows, "the same records");
    assert_eq!(
        (replayed.start.clone(), replayed.end.clone()),
        (planned.start.clone(), planned.end.clone())
    );
    published.extend(replayed_windows);
    second.commit(&replayed.end).await.unwrap();
    let mut end = replayed.end;
    while let Some(batch) = next_batch(&mut second).await {
        published.extend(windows_of(&batch));
        second.commit(&batch.end).await.unwrap();
        end = batch.end;
    }
    second.close().await.unwrap();

    for pair in ["BTC_USDT", "ETH_USDT"] {
        let mut starts: Vec<i64> = published
            .iter()
            .filter(|((p, _), _)| p == pair)
            .map(|((_, s), _)| *s)
            .collect();
        let count = starts.len();
        starts.sort();
        starts.dedup();
        assert_eq!(starts.len(), count, "{pair}: no window twice");
        let expected: Vec<i64> = (0..windows)
            .map(|i| from + i * secs)
            .filter(|s| *s != quiet)
            .collect();
        assert_eq!(starts, expected, "{pair}: no window missing");
        assert_eq!(
            end.json()["lastWindow"][format!("{pair} 1m")].as_i64(),
            Some(to),
            "{pair}: the position is the last window"
        );
    }
    // The first run crashed after 3 committed batches of 100: it had not finished BTC_USDT.
    assert_eq!(
        committed.unwrap().json()["lastWindow"]["BTC_USDT 1m"].as_i64(),
        Some(from + 300 * secs),
        "300 windows and the gap before them"
    );
}

/// A loopback port nothing listens on (bound, then let go).
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("a local address");
    drop(listener);
    format!("http://{addr}/api/v4")
}

/// A started source for `config` (not available-now: `once` or not, as configured).
async fn started_source(config: GateioConfig) -> GateioSource {
    let mut source = GateioSource::new(config).expect("a valid gateio config");
    source
        .start(StartRequest {
            committed: None,
            available_now: false,
        })
        .await
        .expect("start");
    source
}

/// Polls `source` (as the runtime does) until a poll fails; the failure. Fails the test when the
/// run ends as a success or is still polling after 30 s.
async fn poll_until_error(source: &mut GateioSource) -> engine::Error {
    let limits = PollLimits {
        max_records: 100,
        max_wait: Duration::from_millis(200),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match source.poll(limits).await {
            Err(e) => return e,
            Ok(Poll::Exhausted) => panic!("the run ended as if it had succeeded"),
            Ok(_) => {}
        }
    }
    panic!("the source was still polling after 30 s: a --once run would hang");
}

fn retry_config(base: &str, once: bool, max_attempts: u32) -> GateioConfig {
    let mut config = GateioConfig::new(vec!["BTC_USDT".to_owned()]);
    config.base_url = base.to_owned();
    config.once = once;
    config.max_attempts = max_attempts;
    config.retry_backoff_initial_ms = 40;
    config.retry_backoff_max_ms = 160;
    config.request_timeout_ms = 2_000;
    config
}

/// The user's report: `ingest gateio --once --url http://127.0.0.1:9` never ended.
#[tokio::test]
async fn a_once_poll_of_an_unreachable_api_fails_for_good_naming_the_url_and_reason() {
    let base = closed_port_url().await;
    let mut source = started_source(retry_config(&base, true, 3)).await;
    let started = Instant::now();
    let err = poll_until_error(&mut source).await;
    let text = engine::report(&err).to_string();
    assert!(
        !err.is_transient(),
        "a transient error is retried forever: {text}"
    );
    assert!(
        text.contains(&format!(
            "GET {base}/spot/candlesticks?currency_pair=BTC_USDT"
        )),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    assert!(text.contains("(gave up after 3 attempts)"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let retries = source
        .metrics()
        .into_iter()
        .find(|(name, _)| *name == "retries")
        .map(|(_, n)| n);
    assert_eq!(retries, Some(2), "3 attempts are 2 retries");
}

/// On the stand-in answering 503: exactly `max_attempts` requests, each pause at least the
/// backoff's floor for its attempt (it grows, it is not reset), then a permanent failure.
#[tokio::test]
async fn a_once_poll_retries_a_failing_api_with_a_growing_backoff_then_fails() {
    let server = RestServer::serve(|_, _| {
        Reply::error(503, "SERVER_ERROR", "Service temporarily unavailable")
    })
    .await;
    let mut source = started_source(retry_config(&server.base, true, 4)).await;
    let err = poll_until_error(&mut source).await;
    let text = engine::report(&err).to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(
        text.contains("503 Service Unavailable SERVER_ERROR: Service temporarily unavailable (gave up after 4 attempts)"),
        "{text}"
    );
    assert!(text.contains(&server.base), "{text}");
    let at: Vec<Instant> = server.requests().iter().map(|s| s.at).collect();
    assert_eq!(at.len(), 4, "one request per attempt, then none");
    // Ceilings 40, 80, 160 ms; each pause is drawn from the upper half of its ceiling.
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, floor) in gaps.iter().zip([20u64, 40, 80]) {
        assert!(*gap >= Duration::from_millis(floor), "{gaps:?}");
    }
    // Let the engine retry the poll as it would a transient failure: nothing more is requested.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.requests().len(), 4, "no request after giving up");
}

/// A live schedule whose API is down at start keeps trying past `max_attempts` (the pause keeps
/// growing to its cap rather than starting over), and publishes once the API answers.
#[tokio::test]
async fn a_live_schedule_keeps_retrying_an_unreachable_api_and_recovers() {
    const FAILURES: usize = 7;
    let server = RestServer::serve(|n, seen| {
        if n < FAILURES {
            Reply::error(502, "BAD_GATEWAY", "upstream down")
        } else {
            Reply::json(rows(seen.query_i64("from"), seen.query_i64("to"), 60, &[]))
        }
    })
    .await;
    let mut config = retry_config(&server.base, false, 3);
    config.lookback_windows = 3;
    let mut source = started_source(config).await;
    let limits = PollLimits {
        max_records: 100,
        max_wait: Duration::from_millis(200),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // The engine never sees these failures: a failed poll followed by an idle one is what made
    // it log "Recovered after transient failures" while every request still failed.
    let batch = loop {
        assert!(Instant::now() < deadline, "no candles within 30 s");
        match source.poll(limits).await {
            Ok(Poll::Batch(b)) => break b,
            Ok(Poll::Idle) => {}
            Ok(Poll::Exhausted) => panic!("a live schedule ended"),
            Err(e) => panic!("a live schedule handed the engine a failure: {e}"),
        }
    };
    assert!(!batch.records.is_empty());
    let at: Vec<Instant> = server.requests().iter().map(|s| s.at).collect();
    assert!(at.len() > FAILURES, "{} requests", at.len());
    let gaps: Vec<Duration> = at[..=FAILURES].windows(2).map(|w| w[1] - w[0]).collect();
    // Ceilings 40, 80, 160, then capped at 160 across the requests that gave up.
    for (gap, floor) in gaps.iter().zip([20u64, 40, 80, 80, 80, 80, 80]) {
        assert!(*gap >= Duration::from_millis(floor), "{gaps:?}");
    }
    source.close().await.expect("close");
}
