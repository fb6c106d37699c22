//! The example Airflow DAG (`airflow/dags/coinstream_gateio.py`) run by a real Apache Airflow:
//! `airflow dags test` from the venv that `scripts/test.sh` makes from
//! `scripts/requirements-airflow.txt` (its `airflow` is `COINSTREAM_AIRFLOW`), with a fresh
//! `AIRFLOW_HOME` and SQLite metadata database per run. The DAG's one task runs the built
//! binary's `ingest gateio --once` against testkit's Gate.io stand-in and publishes to a fresh
//! topic on the real Kafka (`scripts/services.sh up`); every candle the stand-in served must be on
//! the topic, once, as the candle record.
//!
//! A missing venv or Kafka fails the test. Its wall time is about 30 s, most of it Airflow
//! starting (parsing the DAG, migrating the database, the task runner).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::candles::check_candle;
use common::{brokers, repo, unique};
use testkit::gateio::{Reply, RestServer, now_secs, row, rows};
use testkit::kafka::{Received, create_topics, messages_on, read_topic};

mod common;

const DAG_ID: &str = "coinstream_gateio_candles";
/// The DAG's default `COINSTREAM_GATEIO_PAIRS`, which the test leaves as shipped.
const PAIRS: [&str; 3] = ["BTC_USDT", "ETH_USDT", "SOL_USDT"];
const PARTITIONS: i32 = 3;
/// How long one Airflow command may take. `airflow dags test` needs under a minute when the task
/// succeeds; a failing task is retried as the DAG says (3 retries, 1 min apart), so Airflow
/// reports the failure itself after about 4 minutes.
const AIRFLOW_LIMIT: Duration = Duration::from_secs(330);

/// The venv's `airflow`; a missing one fails the test, saying how to make it.
fn airflow() -> PathBuf {
    match std::env::var_os("COINSTREAM_AIRFLOW").map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        other => panic!(
            "COINSTREAM_AIRFLOW is {other:?}, not an airflow executable: run scripts/test.sh, \
             which makes the venv $COINSTREAM_AIRFLOW_VENV (default \
             ~/.cache/coinstream/venv-airflow) from scripts/requirements-airflow.txt, or make it \
             by hand (python3 -m venv DIR && DIR/bin/pip install -r \
             scripts/requirements-airflow.txt) and set COINSTREAM_AIRFLOW=DIR/bin/airflow"
        ),
    }
}

/// `airflow ARGS` in `home` (its `AIRFLOW_HOME`, holding the SQLite database) with the DAG
/// configured by `dag_env`, run to its end within [`AIRFLOW_LIMIT`]: its status and its whole
/// output (stdout and stderr interleaved, as written to `home/<first arg>.log`).
fn run_airflow(home: &Path, args: &[&str], dag_env: &[(&str, String)]) -> (ExitStatus, String) {
    let log_path = home.join(format!("{}.log", args[0]));
    let log = File::create(&log_path).unwrap();
    let mut command = Command::new(airflow());
    command
        .args(args)
        .env("AIRFLOW_HOME", home)
        .env("AIRFLOW__CORE__DAGS_FOLDER", repo().join("airflow/dags"))
        .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        // Whatever the developer's shell sets for the DAG must not reach this run.
        .env_remove("COINSTREAM_GATEIO_PAIRS")
        .envs(dag_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        // Its own process group: a run past its limit is stopped with every process it started
        // (the task runner, the task's bash and coinstream).
        .process_group(0);
    let mut child = command.spawn().expect("airflow starts");
    let deadline = Instant::now() + AIRFLOW_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "airflow {args:?} did not finish within {AIRFLOW_LIMIT:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (status, std::fs::read_to_string(&log_path).unwrap())
}

/// A Gate.io stand-in that answers as the API does at the time of the request: the closed windows
/// of the asked range that ended by then, plus the window still open (marked so, which the source
/// must not publish). Returns its base URL and every (pair, window start) it served as closed.
async fn stand_in() -> (String, Arc<Mutex<BTreeSet<(String, i64)>>>) {
    let served = Arc::new(Mutex::new(BTreeSet::new()));
    let log = served.clone();
    let server = RestServer::serve(move |_, seen| {
        let (from, to) = (seen.query_i64("from"), seen.query_i64("to"));
        let open = now_secs().div_euclid(60) * 60;
        let last_closed = to.min(open - 60);
        let pair = seen.query["currency_pair"].clone();
        let mut served = log.lock().unwrap();
        for start in (from + 59).div_euclid(60)..=last_closed.div_euclid(60) {
            served.insert((pair.clone(), start * 60));
        }
        let extra = if (from..=to).contains(&open) {
            vec![row(open, false)]
        } else {
            Vec::new()
        };
        Reply::json(rows(from, last_closed, 60, &extra))
    })
    .await;
    (server.base, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_dags_test_runs_the_gateio_dag_into_kafka() {
    let started = Instant::now();
    let airflow_exe = airflow();
    let (base, served) = stand_in().await;
    let topic = unique("candles_airflow");
    let dead_letters = format!("{topic}_dead_letters");
    create_topics(&[(&topic, PARTITIONS), (&dead_letters, 1)]).await;

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("airflow");
    std::fs::create_dir(&home).unwrap();
    // What the DAG reads from the worker's environment; the pairs stay the DAG's default.
    let dag_env = vec![
        (
            "COINSTREAM_BIN",
            env!("CARGO_BIN_EXE_coinstream").to_owned(),
        ),
        ("COINSTREAM_DIR", repo().display().to_string()),
        ("COINSTREAM_GATEIO_URL", base.clone()),
        (
            "COINSTREAM_GATEIO_STATE",
            dir.path().join("gateio-checkpoint").display().to_string(),
        ),
        ("KAFKA_BOOTSTRAP", brokers()),
        ("COINSTREAM_GATEIO_TOPIC", topic.clone()),
    ];
    let home_for_airflow = home.clone();
    let (migrate, dags_test) = tokio::task::spawn_blocking(move || {
        let migrate = run_airflow(&home_for_airflow, &["db", "migrate"], &dag_env);
        assert!(migrate.0.success(), "airflow db migrate: {}", migrate.1);
        let test = run_airflow(&home_for_airflow, &["dags", "test", DAG_ID], &dag_env);
        (migrate, test)
    })
    .await
    .unwrap();
    let (status, log) = dags_test;
    assert!(
        status.success(),
        "airflow dags test {DAG_ID} ({status}):\n{log}"
    );
    // The metadata database is SQLite, in this run's own AIRFLOW_HOME.
    assert!(home.join("airflow.db").is_file(), "{}", migrate.1);
    // The run's outcome as Airflow recorded it: the task ran the binary to its end, exit 0.
    for line in [
        "Gate.io source stopped.",
        "Command exited with return code 0",
        "DagRun Finished: dag_id=coinstream_gateio_candles",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("DagRun Finished") && l.contains("state=success")),
        "the DAG run succeeded:\n{log}"
    );

    // Every closed window the stand-in served, once: the default pairs, 100 windows back from
    // the run's time (the DAG has no --from, its state folder was empty).
    let served = served.lock().unwrap().clone();
    let pairs: BTreeSet<&str> = served.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        pairs,
        BTreeSet::from(PAIRS),
        "the DAG's default pairs asked"
    );
    assert!(served.len() >= 3 * 100, "{} windows served", served.len());
    assert_eq!(
        messages_on(&topic, PARTITIONS),
        served.len() as i64,
        "every served window once on {topic}"
    );
    let on_kafka = read_topic(&topic, served.len(), Duration::from_secs(2)).await;
    assert_eq!(on_kafka.len(), served.len());
    let mut published = BTreeSet::new();
    for Received { key, payload, .. } in &on_kafka {
        let (pair, start) = check_candle(key, payload, |start| row(start, true));
        assert!(published.insert((pair, start)), "{key} {start} twice");
    }
    assert_eq!(published, served, "exactly the closed windows served");
    assert_eq!(messages_on(&dead_letters, 1), 0, "no dead letters");
    eprintln!(
        "airflow dags test: {} candles on {topic} via {}, {:.1?} in all",
        published.len(),
        airflow_exe.display(),
        started.elapsed()
    );
}
