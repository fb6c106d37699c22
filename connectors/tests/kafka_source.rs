//! `KafkaSource` itself on the real broker (`scripts/services.sh`, `$KAFKA_BOOTSTRAP`), driven
//! as the runtime drives it (poll, write, commit): a second instance joining the group, a batch
//! whose partitions are revoked before its commit, and the exact re-read of a batch that was
//! never committed; `starting_offsets` JSON that does not fit the topics. (The contract every source runs is in `contract.rs`.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use connectors::kafka::config::{KafkaSourceConfig, StartingOffsets, parse_starting_offsets};
use connectors::kafka::source::KafkaSource;
use engine::{Poll, PollLimits, RawRecord, Source, SourceBatch, SourceOffset, StartRequest};
use testkit::env::kafka_bootstrap;
use testkit::kafka::{committed_and_end, create_topic, produce};
use testkit::unique_name;

const LIMITS: PollLimits = PollLimits {
    max_records: 10,
    max_wait: Duration::from_millis(200),
};

/// A topic of `partitions` partitions holding messages `{"id":0}` .. `{"id":n-1}`, keyed so
/// every partition gets some, and a consumer group of its own (`group` made unique) that has
/// read none of it: `(topic, group)`.
async fn topic_and_group(group: &str, partitions: i32, n: usize) -> (String, String) {
    let topic = unique_name("kafka_source");
    create_topic(&topic, partitions).await;
    let messages: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("key-{}", i % 16),
                serde_json::json!({ "id": i }).to_string().into_bytes(),
            )
        })
        .collect();
    produce(&topic, &messages).await;
    (topic, unique_name(group))
}

fn config(topic: &str, group: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: Some(kafka_bootstrap()),
        topics: vec![topic.to_owned()],
        group_id: group.to_owned(),
        starting_offsets: StartingOffsets::Earliest,
        ..KafkaSourceConfig::default()
    }
}

async fn started(config: KafkaSourceConfig, committed: Option<SourceOffset>) -> KafkaSource {
    let mut source = KafkaSource::new(config).expect("a valid kafka source config");
    source
        .start(StartRequest {
            committed,
            available_now: false,
        })
        .await
        .expect("the source starts");
    source
}

/// One record as the source describes it: `(partition, offset, id)`.
type Seen = (i64, i64, i64);

fn seen(source: &KafkaSource, records: &[RawRecord]) -> Vec<Seen> {
    records
        .iter()
        .map(|r| {
            let at = source.describe_position(r.position);
            let body: serde_json::Value =
                serde_json::from_slice(&r.payload).expect("a JSON payload");
            (
                at["partition"].as_i64().expect("a partition"),
                at["offset"].as_i64().expect("an offset"),
                body["id"].as_i64().expect("an id"),
            )
        })
        .collect()
}

/// The next batch with records (within 60 s).
async fn next_batch(source: &mut KafkaSource) -> SourceBatch {
    next_batch_of(source, LIMITS).await
}

/// The next batch with records within `limits` (within 60 s).
async fn next_batch_of(source: &mut KafkaSource, limits: PollLimits) -> SourceBatch {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Poll::Batch(b) = source.poll(limits).await.expect("poll")
            && !b.records.is_empty()
        {
            return b;
        }
    }
    panic!("no batch within 60 s");
}

/// The source's metric `name` (0 when it has none).
fn metric(source: &KafkaSource, name: &str) -> u64 {
    source
        .metrics()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, value)| value)
}

fn assigned(source: &KafkaSource) -> u64 {
    metric(source, "assigned_partitions")
}

/// The next batch, "written" (its records returned) and committed, as the runtime does.
async fn write_and_commit(source: &mut KafkaSource) -> Vec<Seen> {
    let batch = next_batch(source).await;
    let records = seen(source, &batch.records);
    source.commit(&batch.end).await.expect("commit");
    records
}

/// Each partition's committed offset in `group` (None: nothing committed).
fn committed(group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    committed_and_end(group, topic, partitions)
        .into_iter()
        .map(|(p, c, _)| (p, c))
        .collect()
}

/// Records that were handed out (and "written") by some instance and then committed: a record
/// twice is a record processed twice, a missing one a record lost.
fn assert_each_once(processed: &[Seen], n: usize) {
    let mut ids: Vec<i64> = processed.iter().map(|s| s.2).collect();
    ids.sort_unstable();
    let twice: Vec<i64> = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(twice.is_empty(), "records processed twice: {twice:?}");
    assert_eq!(
        ids,
        (0..n as i64).collect::<Vec<_>>(),
        "every record processed once"
    );
}

/// A restart from `group`'s committed offsets (no checkpoint) that writes and commits batches
/// until, with `processed`, all `n` records are there: each record of `unfinished` (handed out
/// but never committed: `what`) must be read again, and every record is processed once.
async fn restart_and_finish(
    topic: &str,
    group: &str,
    mut processed: Vec<Seen>,
    unfinished: &[Seen],
    what: &str,
    n: usize,
) {
    let mut restarted = started(config(topic, group), None).await;
    let mut rest = Vec::new();
    while processed.len() + rest.len() < n {
        rest.extend(write_and_commit(&mut restarted).await);
    }
    for record in unfinished {
        assert!(
            rest.contains(record),
            "{record:?}, {what}, was not read again"
        );
    }
    processed.extend(rest);
    assert_each_once(&processed, n);
    restarted.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_the_group_takes_partitions_and_nothing_is_read_twice_or_lost() {
    const PARTITIONS: i32 = 4;
    const N: usize = 400;
    let (topic, group) = topic_and_group("kafka_source_rebalance", PARTITIONS, N).await;
    // Commits only when partitions are revoked and at close: where the second instance starts
    // in each partition it takes is what the first committed as it let the partition go.
    let config = |topic: &str, group: &str| KafkaSourceConfig {
        commit_interval: Duration::from_secs(3600),
        ..config(topic, group)
    };
    let mut first = started(config(&topic, &group), None).await;
    let mut processed = Vec::new();
    // The first instance alone: all four partitions, a few batches written and committed.
    for _ in 0..4 {
        processed.extend(write_and_commit(&mut first).await);
    }
    assert_eq!(
        assigned(&first),
        PARTITIONS as u64,
        "alone, it holds every partition"
    );

    // The second joins; both run as the runtime runs them, each committing after each batch.
    let mut second = started(config(&topic, &group), None).await;
    let mut by_second = Vec::new();
    let mut split = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while processed.len() < N && Instant::now() < deadline {
        for (source, is_second) in [(&mut first, false), (&mut second, true)] {
            if let Poll::Batch(batch) = source.poll(LIMITS).await.expect("poll") {
                let records = seen(source, &batch.records);
                if is_second {
                    by_second.extend(records.iter().copied());
                }
                processed.extend(records);
                source.commit(&batch.end).await.expect("commit");
            }
        }
        let (a, b) = (assigned(&first), assigned(&second));
        if a > 0 && b > 0 {
            assert_eq!(
                a + b,
                PARTITIONS as u64,
                "the partitions are split, none held twice"
            );
            split = true;
        }
    }
    assert!(split, "the second instance never got partitions");
    assert!(!by_second.is_empty(), "the second instance read nothing");
    // The second continued at the first's committed offsets, never from a partition's start.
    assert_each_once(&processed, N);
    for source in [&mut first, &mut second] {
        source.close().await.expect("close");
    }
    let ends = committed_and_end(&group, &topic, PARTITIONS);
    for (partition, committed, end) in ends {
        assert_eq!(
            committed,
            Some(end),
            "partition {partition} committed to its end"
        );
    }
}

/// Each partition's end after `batches` (None: in none of them), as the group should hold it.
fn ends_of(topic: &str, partitions: i32, batches: &[&SourceBatch]) -> BTreeMap<i32, Option<i64>> {
    let mut ends: BTreeMap<i32, Option<i64>> = (0..partitions).map(|p| (p, None)).collect();
    for batch in batches {
        for (partition, end) in ends.iter_mut() {
            if let Some(next) = batch.end.json()[topic][partition.to_string()].as_i64() {
                *end = Some(next);
            }
        }
    }
    ends
}

/// Waits (up to 30 s) until the group's committed offsets are `expected`; the last ones read.
async fn committed_eventually(
    group: &str,
    topic: &str,
    expected: &BTreeMap<i32, Option<i64>>,
) -> BTreeMap<i32, Option<i64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = committed(group, topic, expected.len() as i32);
        if &now == expected || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_query_commits_to_the_group_once_per_commit_interval_and_the_rest_at_close() {
    const PARTITIONS: i32 = 2;
    const N: usize = 100;
    let (topic, group) = topic_and_group("kafka_source_commit_interval", PARTITIONS, N).await;
    let hourly = KafkaSourceConfig {
        commit_interval: Duration::from_secs(3600),
        ..config(&topic, &group)
    };
    let mut source = started(hourly, None).await;
    // The first batch's commit is sent at once: none was sent before.
    let first = next_batch(&mut source).await;
    source.commit(&first.end).await.expect("commit");
    let after_first = ends_of(&topic, PARTITIONS, &[&first]);
    assert_eq!(
        committed_eventually(&group, &topic, &after_first).await,
        after_first,
        "the first batch's commit"
    );
    // The next batches' wait for the interval: the group still holds the first batch's end
    // after they were committed and the broker had time to take any commit sent.
    let (second, third) = (next_batch(&mut source).await, next_batch(&mut source).await);
    source.commit(&second.end).await.expect("commit");
    source.commit(&third.end).await.expect("commit");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed(&group, &topic, PARTITIONS),
        after_first,
        "a commit was sent before the interval passed"
    );
    // Close commits everything processed, and waits for it.
    source.close().await.expect("close");
    assert_eq!(
        committed(&group, &topic, PARTITIONS),
        ends_of(&topic, PARTITIONS, &[&first, &second, &third]),
        "close commits the batches held back"
    );

    // With a short interval, the ends held back go out once it has passed, with no batch after
    // them: the source's next poll sends them.
    let (topic, group) = topic_and_group("kafka_source_commit_interval_idle", PARTITIONS, 20).await;
    let brief = KafkaSourceConfig {
        commit_interval: Duration::from_millis(500),
        ..config(&topic, &group)
    };
    let mut source = started(brief, None).await;
    let mut batches = Vec::new();
    let mut read = 0;
    while read < 20 {
        let batch = next_batch(&mut source).await;
        source.commit(&batch.end).await.expect("commit");
        read += batch.records.len();
        batches.push(batch);
    }
    let all = ends_of(&topic, PARTITIONS, &batches.iter().collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&group, &topic, PARTITIONS) != all && Instant::now() < deadline {
        assert!(
            matches!(source.poll(LIMITS).await.expect("poll"), Poll::Idle),
            "every record was read"
        );
    }
    assert_eq!(
        committed(&group, &topic, PARTITIONS),
        all,
        "the held-back ends were committed by the polls after the interval"
    );
    source.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_partitions_were_revoked_before_its_commit_is_not_committed_and_read_again() {
    const PARTITIONS: i32 = 2;
    const N: usize = 100;
    let (topic, group) = topic_and_group("kafka_source_revoke", PARTITIONS, N).await;
    // A short poll interval, so that a batch whose write takes longer loses its partitions.
    let slow = KafkaSourceConfig {
        session_timeout: Duration::from_secs(6),
        max_poll_interval: Duration::from_secs(7),
        ..config(&topic, &group)
    };
    let mut first = started(slow, None).await;
    let processed = write_and_commit(&mut first).await;
    let before = committed(&group, &topic, PARTITIONS);

    // A batch is handed out; its write takes longer than max_poll_interval, and meanwhile a
    // second instance takes over the group.
    let in_flight = next_batch(&mut first).await;
    let in_flight_seen = seen(&first, &in_flight.records);
    let mut second = started(config(&topic, &group), None).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned(&second) < PARTITIONS as u64 && Instant::now() < deadline {
        // Polled but not committed: these records are the second's first batch, read again
        // below from the committed offsets (the source drops nothing it did not hand out).
        let _ = second
            .poll(PollLimits {
                max_records: 1,
                ..LIMITS
            })
            .await
            .expect("poll");
    }
    assert_eq!(
        assigned(&second),
        PARTITIONS as u64,
        "the second took every partition"
    );
    drop(second);

    // The slow write is done: the commit must not move the partitions it no longer holds.
    first
        .commit(&in_flight.end)
        .await
        .expect("a commit after losing the partitions is not an error the runtime retries");
    assert_eq!(
        committed(&group, &topic, PARTITIONS),
        before,
        "the revoked batch was committed ({} .. {})",
        in_flight.start,
        in_flight.end
    );
    drop(first);

    // The new owner (restarted from the group's offsets) reads the batch again, which its
    // first owner wrote but could not commit (at-least-once: the sinks' idempotent writes
    // absorb it); counted once, as committed, every record is there once.
    restart_and_finish(
        &topic,
        &group,
        processed,
        &in_flight_seen,
        "of the revoked batch",
        N,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_batch_is_read_again_exactly_after_a_restart() {
    const PARTITIONS: i32 = 3;
    const N: usize = 150;
    let (topic, group) = topic_and_group("kafka_source_replay", PARTITIONS, N).await;
    let mut first = started(config(&topic, &group), None).await;
    let done = next_batch(&mut first).await;
    let mut processed = seen(&first, &done.records);
    first.commit(&done.end).await.expect("commit");
    let planned = next_batch(&mut first).await;
    let planned_seen = seen(&first, &planned.records);
    // A crash: no commit, no close.
    drop(first);

    // The restart, from the checkpoint's committed end: the planned batch again.
    let mut second = started(config(&topic, &group), Some(done.end.clone())).await;
    let replayed = second
        .fetch_range(&planned.range())
        .await
        .expect("the batch is re-read");
    assert_eq!(
        seen(&second, &replayed.records),
        planned_seen,
        "the same records from the same offsets, in the same order"
    );
    assert_eq!(
        (&replayed.start, &replayed.end),
        (&planned.start, &planned.end),
        "the same offsets"
    );
    processed.extend(seen(&second, &replayed.records));
    second.commit(&replayed.end).await.expect("commit");

    // A second crash, before any more commits: a restart with no checkpoint polls on from the
    // group's offsets, which are the replayed batch's end.
    let next = next_batch(&mut second).await;
    let next_seen = seen(&second, &next.records);
    drop(second);
    restart_and_finish(
        &topic,
        &group,
        processed,
        &next_seen,
        "polled but never committed",
        N,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_starts_at_the_checkpoints_offsets_where_the_groups_commit_is_behind_them() {
    const PARTITIONS: i32 = 3;
    const N: usize = 150;
    let (topic, group) = topic_and_group("kafka_source_checkpoint_first", PARTITIONS, N).await;
    let mut first = started(config(&topic, &group), None).await;
    let mut processed = write_and_commit(&mut first).await;
    first.close().await.expect("close");
    let group_before = committed(&group, &topic, PARTITIONS);

    // The next batch is written and the checkpoint records it as committed, but the group never
    // gets its commit (a crash before the broker's answer: the commit returns once it is sent).
    let mut second = started(config(&topic, &group), None).await;
    let lost_commit = next_batch(&mut second).await;
    processed.extend(seen(&second, &lost_commit.records));
    drop(second);
    assert_eq!(
        committed(&group, &topic, PARTITIONS),
        group_before,
        "the group's offsets are behind the checkpoint's"
    );

    // The restart is given the checkpoint's end: none of that batch is read again, and the group
    // records the checkpoint's offsets at once.
    let mut third = started(config(&topic, &group), Some(lost_commit.end.clone())).await;
    let batch = next_batch(&mut third).await;
    // Each partition's first offset not processed: the checkpoint's end, else the group's.
    let start_of = |partition: i64| {
        lost_commit.end.json()[&topic][partition.to_string()]
            .as_i64()
            .or(group_before[&(partition as i32)])
            .unwrap_or(0)
    };
    assert_eq!(
        committed(&group, &topic, PARTITIONS),
        (0..PARTITIONS)
            .map(|p| (p, Some(start_of(p.into()))))
            .collect::<BTreeMap<_, _>>(),
        "the group took the checkpoint's offsets at assignment"
    );
    let after = seen(&third, &batch.records);
    third.commit(&batch.end).await.expect("commit");
    for record in &after {
        let start = start_of(record.0);
        assert!(
            record.1 >= start,
            "{record:?} was read again although the checkpoint holds it as processed (start {start})"
        );
    }
    processed.extend(after);
    third.close().await.expect("close");

    // A stale checkpoint (its offsets behind the group's, as when another instance read on) does
    // not rewind: the group's offsets stand, and the rest is read once.
    let mut fourth = started(config(&topic, &group), Some(lost_commit.start.clone())).await;
    while processed.len() < N {
        processed.extend(write_and_commit(&mut fourth).await);
    }
    assert_each_once(&processed, N);
    fourth.close().await.expect("close");
}

/// `config` starting at the JSON `offsets` (Spark's `startingOffsets` form).
fn config_at(topic: &str, group: &str, offsets: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        starting_offsets: parse_starting_offsets(offsets).expect("starting offsets JSON"),
        ..config(topic, group)
    }
}

/// `start` with `config` fails permanently with an error that says `expected` (the test fails
/// if it starts).
async fn assert_start_refused(config: KafkaSourceConfig, expected: &str) {
    let mut source = KafkaSource::new(config).expect("a valid kafka source config");
    let err = match source
        .start(StartRequest {
            committed: None,
            available_now: false,
        })
        .await
    {
        Ok(()) => panic!("the source started"),
        Err(e) => e,
    };
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains(expected), "{err}");
}

/// No partition of `topic` (of `partitions`) has an offset committed in `group` (a refused start moved none).
fn assert_nothing_committed(group: &str, topic: &str, partitions: i32) {
    let untouched = committed(group, topic, partitions);
    assert!(
        untouched.values().all(Option::is_none),
        "nothing committed: {untouched:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_offsets_naming_a_topic_not_subscribed_is_refused_before_any_read() {
    let (topic, group) = topic_and_group("kafka_source_other_topic", 3, 30).await;
    // The user's report: this started at the end of `topic`, read nothing and exited 0.
    let err = KafkaSource::new(config_at(&topic, &group, r#"{"other":{"0":1}}"#))
        .err()
        .expect("the config is refused")
        .to_string();
    assert!(
        err.contains(&format!(
            "source: starting_offsets: names topic \"other\", which is not in topics ({topic})"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("leaves out topic \"{topic}\"")),
        "{err}"
    );
    assert_nothing_committed(&group, &topic, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_offsets_naming_a_partition_the_topic_lacks_stop_the_start_permanently() {
    let (topic, group) = topic_and_group("kafka_source_no_partition", 3, 30).await;
    for offsets in [
        format!(r#"{{"{topic}":{{"5":3}}}}"#),
        format!(r#"{{"{topic}":{{"0":-2,"1":-2,"2":-2,"5":3}}}}"#),
    ] {
        assert_start_refused(
            config_at(&topic, &group, &offsets),
            &format!(
                "starting_offsets names partitions the broker does not have: {topic}/5; the topics have {topic}/0, {topic}/1, {topic}/2"
            ),
        )
        .await;
    }
    // Spark's rule: on a first start the JSON names every partition.
    assert_start_refused(
        config_at(&topic, &group, &format!(r#"{{"{topic}":{{"0":-2,"2":-1}}}}"#)),
        &format!(
            "starting_offsets must name every partition of the topics, but leaves out {topic}/1; use -2 for earliest or -1 for latest"
        ),
    )
    .await;
    assert_nothing_committed(&group, &topic, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_offsets_naming_every_partition_start_each_where_named() {
    const N: usize = 300;
    let (topic, group) = topic_and_group("kafka_source_specific", 3, N).await;
    let ends: BTreeMap<i32, i64> = committed_and_end(&group, &topic, 3)
        .into_iter()
        .map(|(p, _, end)| (p, end))
        .collect();
    assert!(
        ends.values().all(|&e| e > 2),
        "each partition has records: {ends:?}"
    );
    // Partition 0 from offset 2, partition 1 from the earliest, partition 2 from the end.
    let offsets = format!(r#"{{"{topic}":{{"0":2,"1":-2,"2":-1}}}}"#);
    let mut source = started(config_at(&topic, &group, &offsets), None).await;
    let expected = (ends[&0] - 2 + ends[&1]) as usize;
    let mut read: Vec<Seen> = Vec::new();
    while read.len() < expected {
        read.extend(write_and_commit(&mut source).await);
    }
    // Nothing more arrives: partition 2 started at its end.
    for _ in 0..5 {
        if let Poll::Batch(b) = source.poll(LIMITS).await.expect("poll") {
            read.extend(seen(&source, &b.records));
        }
    }
    source.close().await.expect("close");
    assert_eq!(read.len(), expected, "records read: {read:?}");
    let mut from = BTreeMap::new();
    for (partition, offset, _) in &read {
        let first = from.entry(*partition).or_insert(*offset);
        *first = (*first).min(*offset);
    }
    assert_eq!(
        from,
        BTreeMap::from([(0, 2), (1, 0)]),
        "first offset read per partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_holding_most_of_a_backlog_gets_its_share_without_the_others_filling_the_buffer()
 {
    // Seven messages in ten under one key: one partition holds most of the topic. Each batch
    // takes each partition's share of what is left (most of it from the busy partition), while
    // librdkafka fetches every partition alike. Messages are about a trade's size, so a fetch
    // response holds about as many of them as of trades.
    const PARTITIONS: i32 = 6;
    const N: usize = 200_000;
    const BIG: PollLimits = PollLimits {
        max_records: 500,
        max_wait: Duration::from_millis(500),
    };
    let topic = unique_name("kafka_source_skew");
    create_topic(&topic, PARTITIONS).await;
    let pad = "x".repeat(160);
    let messages: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let key = if i % 10 < 7 {
                "busy".to_owned()
            } else {
                format!("key-{}", i % 16)
            };
            let body = serde_json::json!({ "id": i, "pad": pad });
            (key, body.to_string().into_bytes())
        })
        .collect();
    produce(&topic, &messages).await;
    let group = unique_name("kafka_source_skew");
    let config = |topic: &str, group: &str| KafkaSourceConfig {
        commit_interval: Duration::from_secs(3600),
        ..config(topic, group)
    };

    // Half the topic, alone.
    let mut first = started(config(&topic, &group), None).await;
    let mut processed = Vec::new();
    let (mut most_buffered, mut most_paused) = (0, 0);
    while processed.len() < N / 2 {
        let batch = next_batch_of(&mut first, BIG).await;
        processed.extend(seen(&first, &batch.records));
        first.commit(&batch.end).await.expect("commit");
        most_buffered = most_buffered.max(metric(&first, "buffered_records"));
        most_paused = most_paused.max(metric(&first, "paused_partitions"));
    }
    assert!(most_paused > 0, "no partition's fetching was ever paused");
    // Unpaused, the other partitions' records filled the buffer up to the poll's bound (65,500
    // records after a batch) while the busy partition's share came in.
    assert!(
        most_buffered <= 20_000,
        "{most_buffered} records were buffered after a batch of {}",
        BIG.max_records
    );

    // A second instance joins while partitions are paused, then leaves: the first takes every
    // partition back and reads each to its end (none stays paused), each record once.
    let mut second = started(config(&topic, &group), None).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut by_second = 0;
    while by_second == 0 && Instant::now() < deadline {
        for (source, is_second) in [(&mut first, false), (&mut second, true)] {
            if let Poll::Batch(batch) = source.poll(BIG).await.expect("poll") {
                let records = seen(source, &batch.records);
                if is_second {
                    by_second += records.len();
                }
                processed.extend(records);
                source.commit(&batch.end).await.expect("commit");
            }
        }
    }
    assert!(by_second > 0, "the second instance read nothing");
    second.close().await.expect("close");
    while processed.len() < N {
        let batch = next_batch_of(&mut first, BIG).await;
        processed.extend(seen(&first, &batch.records));
        first.commit(&batch.end).await.expect("commit");
    }
    assert_each_once(&processed, N);
    first.close().await.expect("close");
}
