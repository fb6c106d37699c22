//! Config mistakes as a user meets them through the binary: a config with mistakes in three
//! sections reports all three, with key paths, in one run (`--set` overrides keys of a shipped
//! file, as flags and tests do); missing files and sink columns are found before anything is
//! read; a command that cannot serve a config says why in its terms.

use std::process::Command;

/// `coinstream <command> --config <repo>/<config> <args…>`: whether it succeeded, and its stderr.
fn coinstream(command: &str, config: &str, args: &[&str]) -> (bool, String) {
    let config = format!("{}/{config}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args([command, "--config", &config])
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `stderr` holds each of `expected`.
fn assert_says_all(stderr: &str, expected: &[String]) {
    for expected in expected {
        assert!(
            stderr.contains(expected.as_str()),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn explain_reports_mistakes_in_three_sections_in_one_run() {
    let (ok, stderr) = coinstream(
        "explain",
        "pipelines/kafka-cassandra.toml",
        &[
            "--set",
            "engine.max_records_per_batch=0",
            "--set",
            "source.group_id=\"\"",
            "--set",
            "sink.ttl_secs=0",
        ],
    );
    assert!(!ok);
    assert_says_all(
        &stderr,
        &[
            "kafka-cassandra.toml: engine.max_records_per_batch (from --set engine.max_records_per_batch=0): must be at least 1".into(),
            "kafka-cassandra.toml: source.group_id (from --set source.group_id=\"\"): must not be empty".into(),
            "kafka-cassandra.toml: sink.ttl_secs (from --set sink.ttl_secs=0): must be at least 1".into(),
        ],
    );
}

/// Every input file the config names is checked at load, so `explain` fails too, each missing
/// file with its key path and the OS's reason, all in one run with the config's other mistakes.
#[test]
fn explain_reports_every_missing_input_file_with_its_key_and_the_os_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = |name: &str| dir.path().join(name).display().to_string();
    let files = format!(
        "transforms.files=[\"sql/profit.sql\", {:?}]",
        missing("extra.sql")
    );
    let report = format!("report.sql={:?}", missing("nope.sql"));
    let source = format!("source.path={:?}", missing("feed.jsonl"));
    let coins = format!("reference.1.path={:?}", missing("coins.json"));
    // A folder is not a file either.
    let folder = format!("reference.0.path={:?}", dir.path().display().to_string());
    let (ok, stderr) = coinstream(
        "explain",
        "coinstream.toml",
        &[
            "--set",
            &files,
            "--set",
            &report,
            "--set",
            &source,
            "--set",
            &coins,
            "--set",
            &folder,
            "--set",
            "engine.max_records_per_batch=0",
        ],
    );
    assert!(!ok);
    // Each value came from a `--set`, so each problem names it.
    assert_says_all(
        &stderr,
        &[
            "coinstream.toml: engine.max_records_per_batch (from --set \
         engine.max_records_per_batch=0): must be at least 1"
                .to_owned(),
            format!(
                "coinstream.toml: transforms.files[1] (from --set {files}): cannot read {}: \
             No such file or directory",
                missing("extra.sql")
            ),
            format!(
                "coinstream.toml: report.sql (from --set {report}): cannot read {}: \
             No such file or directory",
                missing("nope.sql")
            ),
            format!(
                "coinstream.toml: source.path (from --set {source}): cannot read {}: \
             No such file or directory",
                missing("feed.jsonl")
            ),
            format!(
                "coinstream.toml: reference[1].path (from --set {coins}): cannot read {}: \
             No such file or directory",
                missing("coins.json")
            ),
            format!(
                "coinstream.toml: reference[0].path (from --set {folder}): cannot read {}: \
             it is a folder, not a file",
                dir.path().display()
            ),
        ],
    );
    assert!(!stderr.contains("(os error"), "{stderr}");
}

/// A Parquet partition column that the output transform does not produce stops `run` before the
/// source is read: no checkpoint is written, and the message names the key and the valid columns.
#[test]
fn run_refuses_a_partition_column_the_transform_lacks_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let (ok, stderr) = coinstream(
        "run",
        "coinstream.toml",
        &[
            "--trigger",
            "available-now",
            "--set",
            &format!(
                "engine.checkpoint_dir={:?}",
                checkpoint.display().to_string()
            ),
            "--set",
            &format!(
                "sink.path={:?}",
                dir.path().join("profit").display().to_string()
            ),
            "--set",
            &format!(
                "dead_letter.path={:?}",
                dir.path().join("dead_letters").display().to_string()
            ),
            "--set",
            "sink.partition_by=[\"symbol\", \"venue\"]",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            "error: config: sink.partition_by: column \"venue\" is not in the transform's output; \
             valid columns are \"symbol\""
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("batch 0"), "no batch ran: {stderr}");
    assert!(
        !checkpoint.join("offsets").exists(),
        "nothing planned before the check"
    );
    assert!(!dir.path().join("profit").exists(), "nothing written");
}

#[test]
fn query_on_a_config_whose_sink_is_not_a_store_says_which_sink_it_has() {
    let (ok, stderr) = coinstream(
        "query",
        "pipelines/kafka-cassandra.toml",
        &["--set", "sink={ type = \"null\" }", "SELECT 1"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("this config's sink is type = \"null\""),
        "{stderr}"
    );
    // The sink's settings are not dumped as Rust debug output.
    assert!(!stderr.contains("CassandraConfig"), "{stderr}");
}

/// A flag's bad value is named by the flag and says what is expected, before anything runs.
#[test]
fn run_names_the_flag_whose_count_is_zero() {
    let (ok, stderr) = coinstream("run", "coinstream.toml", &["--max-records-per-batch", "0"]);
    assert!(!ok);
    assert!(
        stderr.contains("error: --max-records-per-batch: must be at least 1\n"),
        "{stderr}"
    );
    assert!(!stderr.contains("integral type conversion"), "{stderr}");
    assert!(!stderr.contains("batch 0"), "no batch ran: {stderr}");
}

/// The capture source's former type name is read wherever a config is read, with a warning
/// naming the current one, once, in every command; the plans name the source by its current name.
#[test]
fn explain_warns_of_the_deprecated_source_type_once() {
    let (ok, stderr) = coinstream(
        "explain",
        "coinstream.toml",
        &["--set", "source.type=replay"],
    );
    assert!(ok, "{stderr}");
    let warning = "[source] type = \"replay\" is deprecated and will be removed; it is now called \
                   \"coinbase_capture\".";
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
}

/// The secure pipeline names environment variables, never secrets: unset ones, a missing CA
/// file and a password put in `properties` are each reported at load with the file and key, in
/// one run, and no value of a variable that is set appears in the output.
#[test]
fn secure_pipeline_names_each_unset_secret_variable_and_refuses_secrets_in_the_file() {
    let config = format!(
        "{}/pipelines/kafka-cassandra-secure.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args(["explain", "--config", &config])
        .args([
            "--set",
            "source.security.ca_file=\"/nonexistent/ca.pem\"",
            "--set",
            "dead_letter.properties={\"sasl.password\" = \"in-the-file\"}",
        ])
        .env_remove("KAFKA_SASL_PASSWORD")
        .env_remove("CASSANDRA_PASSWORD")
        .env("KAFKA_SASL_USERNAME", "user-value-7f3a")
        .env("CASSANDRA_USERNAME", "user-value-7f3a")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_says_all(
        &stderr,
        &[
            "kafka-cassandra-secure.toml: source.security.password_env: env var KAFKA_SASL_PASSWORD is not set".into(),
            "kafka-cassandra-secure.toml: source.security.ca_file (from --set source.security.ca_file=\"/nonexistent/ca.pem\"): cannot read /nonexistent/ca.pem: No such file or directory".into(),
            "kafka-cassandra-secure.toml: sink.password_env: env var CASSANDRA_PASSWORD is not set".into(),
            "kafka-cassandra-secure.toml: dead_letter.security.password_env: env var KAFKA_SASL_PASSWORD is not set".into(),
            "dead_letter.properties.sasl.password".into(),
            "secrets do not belong in the config file".into(),
        ],
    );
    // The refused value is echoed only as part of the user's own --set flag, never on its own.
    assert_eq!(
        stderr.matches("in-the-file").count(),
        stderr
            .matches("(from --set dead_letter.properties={ \"sasl.password\" = \"in-the-file\" })")
            .count(),
        "{stderr}"
    );
    assert!(!stderr.contains("user-value-7f3a"), "{stderr}");
}

/// Bad flags, configs and SQL through the binary: each fails with one `error:` line that says
/// what is wrong once, in the user's terms, and never as a Rust debug dump (a config struct,
/// a path, an option, a parser error's `Debug` form).
#[test]
fn each_mistake_is_one_error_line_said_once_without_debug_dumps() {
    let cases: [(&str, &str, &[&str], &str); 5] = [
        (
            "run",
            "coinstream.toml",
            &["--trigger", "soon"],
            "error: --trigger: \"soon\" is not available-now or interval:<n>ms|s|m",
        ),
        (
            "explain",
            "coinstream.toml",
            &["--set", "engine.trigger=5"],
            "engine.trigger (from --set engine.trigger=5): invalid type: integer `5`",
        ),
        (
            "query",
            "coinstream.toml",
            &["SELEC 1"],
            "error: SQL error: sql parser error: Expected: an SQL statement, found: SELEC",
        ),
        (
            "explain",
            "no-such-config.toml",
            &[],
            "no-such-config.toml: cannot read: No such file or directory",
        ),
        // Both would print to stdout; refused before the source is opened.
        (
            "run",
            "pipelines/kafka-cassandra.toml",
            &["--set", "sink={ type = \"stdout\" }", "--progress", "json"],
            "error: --progress json prints the progress records to stdout, where sink.type = \
             \"stdout\" prints its rows",
        ),
    ];
    for (command, config, args, expected) in cases {
        let (ok, stderr) = coinstream(command, config, args);
        let what = format!("{command} {config} {args:?}");
        assert!(!ok, "{what}: {stderr}");
        assert_eq!(stderr.matches(expected).count(), 1, "{what}: {stderr}");
        let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
        assert_eq!(errors, 1, "{what}: {stderr}");
        for dump in ["Config {", "PathBuf(", "Some(", "ParserError(", "config: "] {
            assert!(!stderr.contains(dump), "{what}: {dump:?} in {stderr}");
        }
    }
}
