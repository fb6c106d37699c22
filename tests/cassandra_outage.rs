//! Cassandra stopped for 20 seconds in the middle of a run: the engine stops taking batches,
//! retries, commits nothing meanwhile, and finishes with every row once Cassandra is back, without
//! a restart. It stops the shared Cassandra, so it is the only test in this binary (test binaries
//! run one after another).

use std::time::{Duration, Instant};

use common::*;
use testkit::services::Stopped;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_second_cassandra_outage_mid_run_loses_nothing() {
    let setup = Setup::new("outage").await;
    let (messages, expected) = trades(40_000, 5);
    produce(&setup.topic, &messages).await;
    let mut child = Running::spawn(setup.run(&["--max-records-per-batch", "1000"]));
    // Wait for the first batch to be written, then take Cassandra away.
    child.wait_for_batches(1, Duration::from_secs(120));
    let mut cassandra = Stopped::stop("cassandra");
    let stopped_at = Instant::now();
    assert!(
        std::net::TcpStream::connect(cassandra_node()).is_err(),
        "Cassandra still answers at {} after `scripts/services.sh stop cassandra` (was it started by another services folder?)",
        cassandra_node()
    );
    let batches = |log: &[String]| log.iter().filter(|l| l.starts_with('{')).count();
    let batches_before = batches(child.log());
    child.read_for(Duration::from_secs(20).saturating_sub(stopped_at.elapsed()));
    let batches_during = batches(child.log()) - batches_before;
    assert!(
        child.is_running(),
        "the engine is still running while Cassandra is down:\n{}",
        child.log().join("\n")
    );
    cassandra.start();
    let text = child.finish(Duration::from_secs(400).saturating_sub(stopped_at.elapsed()));
    assert!(
        batches_during <= 1,
        "no batch completed while Cassandra was down ({batches_during})"
    );
    assert!(
        text.contains("Transient failure; nothing is committed until it succeeds."),
        "the log says what happened:\n{text}"
    );
    assert!(
        text.contains("Recovered after transient failures."),
        "the log says it recovered:\n{text}"
    );
    let session = session().await;
    assert_exactly(&stored(&session, &setup.keyspace).await, &expected);
    assert_committed_to_end(&setup.group, &setup.topic);
}
