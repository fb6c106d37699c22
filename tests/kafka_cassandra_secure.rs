//! The production path through servers that require TLS and a login
//! (`scripts/services.sh up --secure`): Kafka's SASL_SSL listener (SCRAM-SHA-512) and the
//! cassandra-secure node (client TLS, PasswordAuthenticator), with
//! `pipelines/kafka-cassandra-secure.toml`. Topics are created and trades produced through the
//! plain listener of the same broker; everything `coinstream` does goes through the secure
//! ones. Each failure case must end the run on its own, quickly, with an error that says what
//! went wrong; and no output of any run here may contain a password.
//!
//! The variables come from `scripts/services.sh env --secure` (scripts/test.sh exports them);
//! a missing one fails the test, it is not skipped.

use std::collections::BTreeMap;
use std::process::Output;
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::*;
use rust_decimal::Decimal;

mod common;

/// How long a run that cannot connect may take to give up: the source's first metadata request
/// waits up to 10 s, the sink's connect 5 s; anything near a minute would be a retry loop.
const GIVE_UP_WITHIN: Duration = Duration::from_secs(40);

fn secure(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the secure servers with `scripts/services.sh up --secure` \
             and export what `scripts/services.sh env --secure` prints (scripts/test.sh does both)"
        )
    })
}

/// The passwords no output may contain.
fn secrets() -> Vec<String> {
    vec![secure("KAFKA_SASL_PASSWORD"), secure("CASSANDRA_PASSWORD")]
}

/// Fails when `out`'s stdout or stderr holds any of `secrets`.
fn assert_no_secret(out: &Output, secrets: &[String]) {
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a password appears in the output:\n{text}"
            );
        }
    }
}

/// `pipelines/kafka-cassandra-secure.toml` over fresh names, pointed at the secure servers the
/// environment names, with the CA of `scripts/services.sh`.
async fn secure_setup(name: &str) -> Setup {
    let mut setup = Setup::shipped(name, "pipelines/kafka-cassandra-secure.toml", PARTITIONS).await;
    let ca = secure("COINSTREAM_TLS_CA");
    let kafka = secure("KAFKA_SECURE_BOOTSTRAP");
    setup.config = setup
        .config
        .set("source.brokers", kafka.clone())
        .set("source.security.ca_file", ca.clone())
        .set(
            "sink.contact_points",
            vec![secure("CASSANDRA_SECURE_NODES")],
        )
        .set("sink.tls_ca_cert_path", ca.clone())
        .set("dead_letter.brokers", kafka)
        .set("dead_letter.security.ca_file", ca);
    setup.config.load();
    setup
}

/// Runs `coinstream run` with `config` (and `env` set over the test's environment), which must
/// fail within [`GIVE_UP_WITHIN`] without printing a password; returns its stderr.
fn fails_fast(setup: &Setup, config: &Pipeline, env: &[(&str, &str)]) -> String {
    let mut cmd = setup.run_with(config, &[]);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let started = Instant::now();
    let out = wait_with_limit(cmd, GIVE_UP_WITHIN);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the run succeeded:\n{stderr}");
    let mut secrets = secrets();
    secrets.extend(
        env.iter()
            .map(|(_, v)| (*v).to_owned())
            .filter(|v| v.len() > 8),
    );
    assert_no_secret(&out, &secrets);
    eprintln!("gave up after {elapsed:?}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_every_trade_once_through_sasl_ssl_and_cassandra_tls_and_query_reads_it_back() {
    let setup = secure_setup("secure").await;
    let (messages, expected) = trades(3_000, 16);
    produce(&setup.topic, &messages).await;
    let secrets = secrets();
    // The source also presents the client certificate (mutual TLS): the broker's listener
    // requests one and verifies it against the CA. The Cassandra node does not request one
    // (5.0 has no "optional" client auth); the sink still loads it with its key.
    let config = setup
        .config
        .clone()
        .set(
            "source.security.cert_file",
            secure("COINSTREAM_TLS_CLIENT_CERT"),
        )
        .set(
            "source.security.key_file",
            secure("COINSTREAM_TLS_CLIENT_KEY"),
        )
        .set(
            "sink.tls_client_cert_path",
            secure("COINSTREAM_TLS_CLIENT_CERT"),
        )
        .set(
            "sink.tls_client_key_path",
            secure("COINSTREAM_TLS_CLIENT_KEY"),
        );
    let started = Instant::now();
    let out = setup
        .run_with(
            &config,
            &[
                "--log",
                "info,coinstream=debug,connectors=debug,engine=debug",
            ],
        )
        .output()
        .unwrap();
    assert_no_secret(&out, &secrets);
    check(&out);
    eprintln!(
        "3000 trades ({} portfolio rows) through the secure listeners in {:?}",
        expected.len(),
        started.elapsed()
    );
    assert_committed_to_end(&setup.group, &setup.topic);

    // Read back with `coinstream query`, over the same TLS and login.
    let mut query = std::process::Command::new(env!("CARGO_BIN_EXE_coinstream"));
    query
        .arg("query")
        .args(setup.config.args())
        .arg("SELECT symbol, trade_id, CAST(profit AS VARCHAR) AS profit FROM crypto_trades");
    let out = query.current_dir(setup.dir.path()).output().unwrap();
    assert_no_secret(&out, &secrets);
    check(&out);
    let mut stored: BTreeMap<(String, i64), Vec<Decimal>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
    {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        stored
            .entry((cells[0].to_owned(), cells[1].parse().unwrap()))
            .or_default()
            .push(Decimal::from_str(cells[2]).unwrap());
    }
    assert_exactly(&stored, &expected);
}

/// The stderr of a run (of its own setup, `name`) whose env var `variable` holds the password
/// `wrong`, which the server refuses; see [`fails_fast`].
async fn with_wrong_password(name: &str, variable: &str, wrong: &str) -> String {
    let setup = secure_setup(name).await;
    fails_fast(&setup, &setup.config, &[(variable, wrong)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kafka_password_stops_the_run_naming_the_broker_and_the_mechanism() {
    let stderr =
        with_wrong_password("badpass", "KAFKA_SASL_PASSWORD", "wrong-password-0f9e8d7c").await;
    let broker = secure("KAFKA_SECURE_BOOTSTRAP");
    assert_mentions(
        &stderr,
        &[
            "the broker refused the login",
            "SCRAM-SHA-512",
            broker.as_str(),
            "Authentication failed",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cassandra_password_stops_the_run_with_an_authentication_error() {
    let stderr =
        with_wrong_password("badcql", "CASSANDRA_PASSWORD", "wrong-password-1a2b3c4d").await;
    let node = secure("CASSANDRA_SECURE_NODES");
    assert_mentions(&stderr, &[node.as_str(), "Authentication"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_servers_is_a_tls_error_for_kafka_and_for_cassandra() {
    let setup = secure_setup("badca").await;
    let other = secure("COINSTREAM_TLS_OTHER_CA");
    let kafka = setup
        .config
        .clone()
        .set("source.security.ca_file", other.clone());
    let stderr = fails_fast(&setup, &kafka, &[]);
    assert_mentions(
        &stderr,
        &["the TLS handshake failed", "certificate verify failed"],
    );
    let cassandra = setup.config.clone().set("sink.tls_ca_cert_path", other);
    let stderr = fails_fast(&setup, &cassandra, &[]);
    assert_mentions(&stderr, &["invalid peer certificate", "UnknownIssuer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_for_another_host_is_a_tls_error_unless_verification_is_off() {
    let setup = secure_setup("badhost").await;
    // The broker's certificate names IP 127.0.0.1 only; "localhost" is the same socket under a
    // name the certificate does not have.
    let port = secure("KAFKA_SECURE_BOOTSTRAP")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let localhost = setup
        .config
        .clone()
        .set("source.brokers", format!("localhost:{port}"));
    let stderr = fails_fast(&setup, &localhost, &[]);
    assert_mentions(
        &stderr,
        &["the TLS handshake failed", "certificate verify failed"],
    );
    // The same name with verification off: the chain is still checked, the name is not, and
    // the run reads the (empty) topic to its end.
    let unchecked = localhost.set("source.security.verify_hostname", false);
    let out = wait_with_limit(setup.run_with(&unchecked, &[]), GIVE_UP_WITHIN);
    assert_no_secret(&out, &secrets());
    check(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_port_is_a_clear_error() {
    let setup = secure_setup("plain").await;
    let mut plain = toml::Table::new();
    plain.insert("protocol".into(), "plaintext".into());
    let kafka = setup.config.clone().set("source.security", plain);
    let stderr = fails_fast(&setup, &kafka, &[]);
    assert_mentions(
        &stderr,
        &[
            "closed the connection at the client's first request, as a TLS listener does",
            "client: plaintext",
            "APIVERSION_QUERY",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_without_tls_on_the_tls_port_is_a_clear_error() {
    let setup = secure_setup("plaincql").await;
    // The shipped file with its tls_ca_cert_path line left out (a key cannot be unset by
    // --set), next to it so its relative paths still resolve.
    let shipped = repo().join("pipelines/kafka-cassandra-secure.toml");
    let text: String = std::fs::read_to_string(&shipped)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("tls_ca_cert_path"))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = tempfile::Builder::new()
        .prefix(".test-plain-cql-")
        .suffix(".toml")
        .tempfile_in(repo().join("pipelines"))
        .unwrap();
    std::fs::write(file.path(), text).unwrap();
    let mut plain = setup.config.clone();
    plain.file = file.path().to_owned();
    plain
        .overrides
        .retain(|o| !o.to_string().starts_with("sink.tls_ca_cert_path"));
    let stderr = fails_fast(&setup, &plain, &[]);
    let node = secure("CASSANDRA_SECURE_NODES");
    assert_mentions(
        &stderr,
        &[
            node.as_str(),
            "closed the connection at the first request (OPTIONS), as a TLS-only port does",
        ],
    );
}
