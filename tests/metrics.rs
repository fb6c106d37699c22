//! The metrics issue 14 adds to `/metrics`, and the Prometheus and Grafana setup of
//! `docker-compose.yaml`, through the built binary on the real Kafka (`scripts/services.sh up`):
//! - the consumer lag per partition of a Kafka-source query equals the real lag (the topic's
//!   ends, read from the broker, less what the query consumed), batch by batch, and is 0 once it
//!   caught up; every metric the Grafana dashboard queries is in that run's scrape;
//! - `coinstream ingest coinbase` and `ingest gateio` serve `/metrics` with the ingesters' own
//!   counters (a reconnect, published trades, a rate-limit wait) as their progress records
//!   report them;
//! - `prometheus/prometheus.yml` scrapes every coinstream service of the compose file on the port
//!   its `--ui` binds, and Grafana's provisioning points at that Prometheus and the dashboard.
//!
//! A missing service fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::coinbase::{FeedServer, Step, exchange_ack, exchange_match, heartbeat};
use testkit::gateio::{Reply, RestServer, now_secs, rows};
use yaml_rust2::{Yaml, YamlLoader};

mod common;

use common::scrape::{free_addr, get, metric_names, samples, snapshot};
use common::{Pipeline, Running, brokers, produce, repo, trades, unique};

const PARTITIONS: i32 = 2;

/// `pipelines/ohlcv.toml` (a windowed aggregation with a watermark: state and watermark series)
/// reading `topic` from its start as `group`, its outputs under `dir`.
fn ohlcv_from_kafka(dir: &std::path::Path, topic: &str, group: &str) -> Pipeline {
    let mut source = toml::Table::new();
    source.insert("type".into(), "kafka".into());
    source.insert("topics".into(), vec![topic.to_owned()].into());
    source.insert("group_id".into(), group.into());
    source.insert("starting_offsets".into(), "earliest".into());
    Pipeline::shipped("pipelines/ohlcv.toml")
        .set("source", source)
        .set_path("engine.checkpoint_dir", &dir.join("checkpoint"))
        .set_path("sink.path", &dir.join("ohlcv"))
        .set_path("dead_letter.path", &dir.join("dead_letters"))
}

/// Per partition of `topic`, the offset past its last record, from the broker.
fn ends(topic: &str) -> BTreeMap<String, i64> {
    testkit::kafka::committed_and_end(&unique("metrics_ends"), topic, PARTITIONS)
        .into_iter()
        .map(|(partition, _, end)| (format!("{topic}/{partition}"), end))
        .collect()
}

/// Per partition (`topic/N`), where the query stands after `records`: the largest end offset
/// any of them reports (0 before any).
fn consumed(records: &[Value], topic: &str) -> BTreeMap<String, i64> {
    let mut at: BTreeMap<String, i64> = (0..PARTITIONS)
        .map(|p| (format!("{topic}/{p}"), 0))
        .collect();
    for r in records {
        if let Some(parts) = r["sources"][0]["endOffset"][topic].as_object() {
            for (p, offset) in parts {
                let entry = at.entry(format!("{topic}/{p}")).or_default();
                *entry = (*entry).max(offset.as_i64().unwrap());
            }
        }
    }
    at
}

/// The lag series of a scrape, by partition.
fn lag_series(metrics: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter_map(|(series, v)| {
            let part = series
                .strip_prefix("coinstream_source_offsets_behind_latest{partition=\"")?
                .strip_suffix("\"}")?;
            Some((part.to_owned(), *v))
        })
        .collect()
}

/// Every `expr` (and the variables' queries) of a Grafana dashboard, wherever it is nested.
fn queries(json: &Value, out: &mut Vec<String>) {
    match json {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(q)) => out.push(q.clone()),
                    _ => queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL query uses (ours all start with `coinstream_`).
fn metrics_of(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("coinstream_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_lag_per_partition_is_the_real_lag_and_the_dashboard_queries_only_served_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("metrics_lag");
    testkit::kafka::create_topic(&topic, PARTITIONS).await;
    let (mut messages, _) = trades(300, 14);
    // One message no schema accepts: a `decode` dead letter, so its series is served too.
    messages.push(("BTC-USD".to_owned(), b"not json".to_vec()));
    produce(&topic, &messages).await;
    let ends = ends(&topic);
    assert_eq!(ends.values().sum::<i64>(), 301, "{ends:?}");
    assert!(
        ends.values().all(|&e| e > 0),
        "both partitions hold records: {ends:?}"
    );

    let config = ohlcv_from_kafka(dir.path(), &topic, &unique("group_metrics_lag"));
    let addr = free_addr();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coinstream"));
    cmd.args(["run", "--trigger", "interval:200ms", "--progress", "json"])
        .args(["--max-records-per-batch", "20", "--ui", &addr.to_string()])
        .args(config.args())
        .current_dir(repo());
    let mut running = Running::spawn(cmd);
    running.wait_for_batches(1, Duration::from_secs(60));

    // Batch by batch, each partition's lag is its end less where the query stands, and the gauge
    // holds the last batch's.
    let (records, metrics) = snapshot(addr);
    assert!(!records.is_empty());
    for (i, r) in records.iter().enumerate() {
        let at = consumed(&records[..=i], &topic);
        let expected: BTreeMap<String, u64> = ends
            .iter()
            .map(|(part, end)| (part.clone(), (end - at[part]) as u64))
            .collect();
        let reported: BTreeMap<String, u64> =
            serde_json::from_value(r["sources"][0]["offsetsBehindLatest"].clone()).unwrap();
        assert_eq!(reported, expected, "batch {i}: {r}");
        let m = &r["sources"][0]["metrics"];
        assert_eq!(
            m["minOffsetsBehindLatest"],
            *expected.values().min().unwrap()
        );
        assert_eq!(
            m["maxOffsetsBehindLatest"],
            *expected.values().max().unwrap()
        );
    }
    // Before it caught up: the first batch took at most 20 of the 301 records.
    let first: u64 = records[0]["sources"][0]["offsetsBehindLatest"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        first,
        301 - records[0]["numInputRows"].as_u64().unwrap(),
        "{}",
        records[0]
    );
    assert!(first >= 281, "{}", records[0]);
    let last = records.last().unwrap();
    let served = lag_series(&samples(&metrics));
    let reported: BTreeMap<String, f64> = last["sources"][0]["offsetsBehindLatest"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, v)| (p.clone(), v.as_f64().unwrap()))
        .collect();
    assert_eq!(served, reported);

    // Caught up: every record read, each partition's lag 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (_, text) = get(addr, "/metrics");
        let m = samples(&text);
        if m.get("coinstream_input_rows_total") == Some(&301.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "not caught up:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let served = lag_series(&samples(&metrics));
    assert_eq!(
        served,
        ends.keys()
            .map(|p| (p.clone(), 0.0))
            .collect::<BTreeMap<_, _>>(),
        "{metrics}\n{}",
        get(addr, "/api/progress").1
    );
    assert_eq!(
        samples(&metrics)[r#"coinstream_dead_letters_total{reason="decode"}"#],
        1.0
    );

    // Every metric a dashboard query names is in this real scrape.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("grafana/dashboards/coinstream.json")).unwrap(),
    )
    .unwrap();
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    assert!(all.len() >= 10, "{all:?}");
    let served = metric_names(&metrics);
    for query in &all {
        let used = metrics_of(query);
        assert!(!used.is_empty(), "a query of no coinstream metric: {query}");
        let missing: Vec<_> = used.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "{missing:?} of {query} not in:\n{metrics}"
        );
    }
    running.terminate(Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_coinbase_serves_the_ingesters_counters_as_its_progress_reports_them() {
    // Trades 1..=10, a dropped connection, then 11..=20 and heartbeats on the second.
    let mut first = vec![Step::Text(exchange_ack(&["BTC-USD"]))];
    first.push(Step::Text(exchange_match("last_match", "BTC-USD", 1)));
    first.extend((2..=10).map(|id| Step::Text(exchange_match("match", "BTC-USD", id))));
    first.push(Step::Drop);
    let mut second = vec![Step::Text(exchange_ack(&["BTC-USD"]))];
    second.push(Step::Text(exchange_match("last_match", "BTC-USD", 10)));
    second.extend((11..=20).map(|id| Step::Text(exchange_match("match", "BTC-USD", id))));
    second.push(Step::KeepAlive(vec![heartbeat("BTC-USD", 20)]));
    let feed = FeedServer::scripted(vec![first, second], 1).await;

    let dir = tempfile::tempdir().unwrap();
    let (mut cmd, addr) = ingest_command("coinbase", &feed.url, "metrics_ingest").await;
    cmd.args(["--products", "BTC-USD"])
        .arg("--checkpoint")
        .arg(dir.path().join("checkpoint"));
    let (running, records, metrics) = ingest_until(cmd, addr, "published", 20.0);
    let last = &records.last().unwrap()["sources"][0]["metrics"];
    for name in [
        "messages_in",
        "reconnects",
        "gaps",
        "lost_trades",
        "published",
    ] {
        assert!(last.get(name).is_some(), "{name} not in {last}");
    }
    assert_eq!(
        metrics[r#"coinstream_source_metric{name="reconnects"}"#],
        1.0
    );
    assert_eq!(
        metrics[r#"coinstream_source_metric{name="lost_trades"}"#],
        0.0
    );
    let read: u64 = records
        .iter()
        .map(|r| r["numInputRows"].as_u64().unwrap())
        .sum();
    assert_eq!(read, 20);
    assert_eq!(metrics["coinstream_input_rows_total"], 20.0);
    assert_eq!(metrics["coinstream_output_rows_total"], 20.0);
    running.terminate(Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_gateio_serves_its_rate_limit_waits_as_its_progress_reports_them() {
    // The first request is refused with a 429 whose reset is a second away; every other gets the
    // closed windows it asks for.
    let server = RestServer::serve(|n, seen| {
        if n == 0 {
            return Reply::too_many_requests(now_secs() + 1);
        }
        Reply::json(rows(seen.query_i64("from"), seen.query_i64("to"), 60, &[]))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cmd, addr) = ingest_command("gateio", &server.base, "metrics_gateio").await;
    cmd.args(["--pairs", "BTC_USDT", "--interval", "1m"])
        .arg("--state")
        .arg(dir.path().join("state"));
    let (running, records, metrics) = ingest_until(cmd, addr, "rate_limited", 1.0);
    // The wait was followed by the same request again, which the server saw.
    let requests = metrics[r#"coinstream_source_metric{name="requests"}"#];
    assert!(requests >= 2.0, "{metrics:#?}");
    assert!(requests <= server.requests().len() as f64, "{metrics:#?}");
    let read: u64 = records
        .iter()
        .map(|r| r["numInputRows"].as_u64().unwrap())
        .sum();
    assert!(read > 0);
    assert_eq!(
        metrics[r#"coinstream_source_metric{name="published"}"#],
        read as f64
    );
    assert_eq!(metrics["coinstream_output_rows_total"], read as f64);
    running.terminate(Duration::from_secs(60));
}

/// `coinstream ingest VENUE --url URL`, publishing to a fresh topic named after `topic_prefix`
/// (made here with its dead-letter topic) and serving its UI at the free address returned; the
/// venue's own flags are the caller's to add.
async fn ingest_command(
    venue: &str,
    url: &str,
    topic_prefix: &str,
) -> (std::process::Command, std::net::SocketAddr) {
    let topic = unique(topic_prefix);
    testkit::kafka::create_topics(&[(&topic, 1), (&format!("{topic}_dead_letters"), 1)]).await;
    let addr = free_addr();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coinstream"));
    cmd.args(["ingest", venue, "--url", url])
        .args(["--brokers", &brokers(), "--topic", &topic])
        .args(["--ui", &addr.to_string()])
        .current_dir(repo());
    (cmd, addr)
}

/// Runs `cmd` (an ingest shortcut serving its UI at `addr`) until `/metrics` shows the source
/// metric `name` at `value`; then checks that every `coinstream_source_metric` series is the last
/// progress record's `sources[0].metrics` and returns the records and the samples of that moment.
fn ingest_until(
    cmd: std::process::Command,
    addr: std::net::SocketAddr,
    name: &str,
    value: f64,
) -> (Running, Vec<Value>, BTreeMap<String, f64>) {
    let mut running = Running::spawn(cmd);
    let series = format!("coinstream_source_metric{{name=\"{name}\"}}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (records, metrics) = loop {
        running.read_for(Duration::from_millis(200));
        // The server is up once the sink passed its healthcheck and the UI bound.
        if std::net::TcpStream::connect(addr).is_ok() {
            let (records, text) = snapshot(addr);
            let m = samples(&text);
            if m.get(&series) == Some(&value) {
                break (records, m);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {series} at {value}:\n{}",
            running.log().join("\n")
        );
    };
    let last = &records.last().unwrap()["sources"][0]["metrics"];
    for (name, value) in last.as_object().unwrap() {
        assert_eq!(
            metrics[&format!("coinstream_source_metric{{name=\"{name}\"}}")],
            value.as_f64().unwrap(),
            "{name}"
        );
    }
    (running, records, metrics)
}

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .remove(0)
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .map(|items| {
            items
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_every_coinstream_service_on_its_ui_port_and_grafana_reads_it() {
    let compose = yaml("docker-compose.yaml");
    let services = compose["services"].as_hash().unwrap();
    // The services that run the coinstream image, and the `host:port` each serves its UI on.
    let mut ui_targets = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        // The coinstream services take their image from the `x-coinstream-image` anchor, through
        // a merge key the YAML reader may leave unresolved.
        let image = service["image"]
            .as_str()
            .or_else(|| service["<<"]["image"].as_str());
        if image != Some("coinstream:dev") {
            continue;
        }
        let command = strings(&service["command"]);
        let at = command
            .iter()
            .position(|a| a == "--ui")
            .unwrap_or_else(|| panic!("{name} has no --ui: {command:?}"));
        let addr: std::net::SocketAddr = command[at + 1].parse().unwrap();
        assert!(
            addr.ip().is_unspecified(),
            "{name} binds {addr}: Prometheus cannot reach loopback"
        );
        ui_targets.insert(format!("{name}:{}", addr.port()));
    }
    assert_eq!(ui_targets.len(), 3, "{ui_targets:?}");

    let prometheus = yaml("prometheus/prometheus.yml");
    let scraped: BTreeSet<String> = prometheus["scrape_configs"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|job| {
            assert_eq!(
                job["metrics_path"].as_str().unwrap_or("/metrics"),
                "/metrics"
            );
            job["static_configs"]
                .as_vec()
                .unwrap()
                .iter()
                .flat_map(|c| strings(&c["targets"]))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(scraped, ui_targets);

    // Prometheus runs with that file; Grafana with its provisioning and the dashboard.
    let mounts = |service: &str| strings(&services[&Yaml::from_str(service)]["volumes"]);
    assert!(
        mounts("prometheus")
            .contains(&"./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro".to_owned()),
        "{:?}",
        mounts("prometheus")
    );
    let grafana = mounts("grafana");
    assert!(grafana.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro".to_owned()));
    assert!(grafana.contains(&"./grafana/dashboards:/var/lib/grafana/dashboards:ro".to_owned()));

    let datasources = yaml("grafana/provisioning/datasources/prometheus.yml");
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["type"].as_str(), Some("prometheus"));
    assert_eq!(datasource["url"].as_str(), Some("http://prometheus:9090"));
    let providers = yaml("grafana/provisioning/dashboards/coinstream.yml");
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
    // Every panel queries that data source, by the uid the provisioning gives it.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("grafana/dashboards/coinstream.json")).unwrap(),
    )
    .unwrap();
    let uid = datasource["uid"].as_str().unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        }
    }
}
