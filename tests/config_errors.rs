//! Config mistakes as a user meets them through the binary: a config with mistakes in three
//! sections reports all three, with key paths, in one run (`--set` overrides keys of a shipped
//! file, as flags and tests do); a command that cannot serve a config says why in its terms.

use std::process::Command;

#[test]
fn explain_reports_mistakes_in_three_sections_in_one_run() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args([
            "explain",
            "--config",
            &format!("{repo}/pipelines/kafka-cassandra.toml"),
            "--set",
            "engine.max_records_per_batch=0",
            "--set",
            "source.group_id=\"\"",
            "--set",
            "sink.ttl_secs=0",
        ])
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "kafka-cassandra.toml: engine.max_records_per_batch: must be at least 1",
        "kafka-cassandra.toml: source.group_id: must not be empty",
        "kafka-cassandra.toml: sink.ttl_secs: must be at least 1",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn query_on_a_config_whose_sink_is_not_the_parquet_store_says_which_sink_it_has() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args([
            "query",
            "--config",
            &format!("{repo}/pipelines/kafka-cassandra.toml"),
            "SELECT 1",
        ])
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("this config's sink is type = \"cassandra\""),
        "{stderr}"
    );
    // The sink's settings are not dumped as Rust debug output.
    assert!(!stderr.contains("CassandraConfig"), "{stderr}");
}
