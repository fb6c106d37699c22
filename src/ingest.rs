//! `coinstream ingest coinbase|gateio`: thin shortcuts for the shipped pipelines
//! `pipelines/ingest-coinbase.toml` and `pipelines/ingest-gateio.toml` (an exchange source →
//! `sql/passthrough.sql` → the Kafka sink). Each flag given overrides one key of the file (a flag
//! left out keeps the file's value), then the engine runs the pipeline as `coinstream run` does:
//! signal handling, batching, progress and de-duplication across restarts (the checkpoint) are
//! the engine's.
//!
//! Paths given as flags are relative to the working directory (paths in the file stay relative to
//! the file's folder).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cli::{
    IngestCoinbaseArgs, IngestCommand, IngestGateioArgs, IngestKafkaArgs, ProgressFormat,
};
use coinstream::config::{Config, Override};

pub async fn dispatch(command: IngestCommand) -> anyhow::Result<()> {
    let (pipeline, overrides, ui) = match command {
        IngestCommand::Coinbase(args) => {
            let ui = args.ui.bind();
            let (pipeline, overrides) = coinbase(args)?;
            (pipeline, overrides, ui)
        }
        IngestCommand::Gateio(args) => {
            let ui = args.ui.bind();
            let (pipeline, overrides) = gateio(args)?;
            (pipeline, overrides, ui)
        }
    };
    let config = Config::load_with(&pipeline, &overrides)?;
    // The source's own counters (messages, reconnects, gaps, lost trades, rate-limit waits)
    // reach `/metrics` through each batch's progress record, as for `run`.
    crate::pipeline::run(config, ProgressFormat::Human, ui).await
}

/// `key` set to the path flag `flag` as an absolute path (it is relative to the working
/// directory, not to the pipeline file); nothing when the flag was left out.
fn path_override(key: &str, flag: &str, path: Option<&Path>) -> anyhow::Result<Option<Override>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let absolute = std::path::absolute(path).with_context(|| flag.to_owned())?;
    match absolute.to_str() {
        Some(text) => Ok(Some(Override::new(key, text).from_flag(flag))),
        None => bail!("{flag}: {} is not UTF-8", absolute.display()),
    }
}

/// `key` set to the value of flag `flag`; nothing when the flag was left out.
fn flag_override(key: &str, flag: &str, value: Option<impl Into<toml::Value>>) -> Option<Override> {
    value.map(|value| Override::new(key, value).from_flag(flag))
}

/// A list flag's items as a TOML array; nothing when the flag was left out (no items).
fn list(items: Vec<String>) -> Option<toml::Value> {
    (!items.is_empty())
        .then(|| toml::Value::Array(items.into_iter().map(toml::Value::from).collect()))
}

/// The overrides every ingest shortcut shares: where the records (and the dead letters) go.
fn kafka_overrides(
    IngestKafkaArgs {
        brokers,
        topic,
        compression,
    }: IngestKafkaArgs,
) -> Vec<Override> {
    let mut overrides = Vec::new();
    if let Some(brokers) = brokers {
        overrides.push(Override::new("sink.brokers", brokers.as_str()).from_flag("--brokers"));
        overrides.push(Override::new("dead_letter.brokers", brokers).from_flag("--brokers"));
    }
    if let Some(topic) = topic {
        overrides.push(
            Override::new("dead_letter.topic", format!("{topic}_dead_letters"))
                .from_flag("--topic"),
        );
        overrides.push(Override::new("sink.topic", topic).from_flag("--topic"));
    }
    overrides.extend(flag_override(
        "sink.compression",
        "--compression",
        compression.map(|codec| codec.as_str()),
    ));
    overrides
}

fn coinbase(args: IngestCoinbaseArgs) -> anyhow::Result<(PathBuf, Vec<Override>)> {
    // In flag order, so that of two bad flags the first is reported.
    let flags = [
        path_override(
            "engine.checkpoint_dir",
            "--checkpoint",
            args.checkpoint.as_deref(),
        )?,
        flag_override("source.url", "--url", args.url),
        flag_override("source.product_ids", "--products", list(args.products)),
        flag_override("source.feed", "--feed", args.feed),
        flag_override(
            "source.idle_timeout_ms",
            "--idle-timeout-ms",
            args.idle_timeout_ms
                .map(i64::try_from)
                .transpose()
                .context("--idle-timeout-ms is too large")?,
        ),
        path_override("source.portfolio", "--portfolio", args.portfolio.as_deref())?,
        path_override("source.coin_map", "--coin-map", args.coin_map.as_deref())?,
    ];
    Ok((args.pipeline, shortcut_overrides(args.kafka, flags)))
}

fn gateio(args: IngestGateioArgs) -> anyhow::Result<(PathBuf, Vec<Override>)> {
    // In flag order, so that of two bad flags the first is reported.
    let flags = [
        path_override("engine.checkpoint_dir", "--state", args.state.as_deref())?,
        flag_override("source.base_url", "--url", args.url),
        flag_override("source.currency_pairs", "--pairs", list(args.pairs)),
        flag_override("source.interval", "--interval", args.interval),
        flag_override(
            "source.from_secs",
            "--from",
            args.from
                .as_deref()
                .map(parse_time)
                .transpose()
                .context("--from")?,
        ),
        flag_override(
            "source.to_secs",
            "--to",
            args.to
                .as_deref()
                .map(parse_time)
                .transpose()
                .context("--to")?,
        ),
        flag_override("source.once", "--once", args.once.then_some(true)),
        path_override("source.portfolio", "--portfolio", args.portfolio.as_deref())?,
    ];
    Ok((args.pipeline, shortcut_overrides(args.kafka, flags)))
}

/// A shortcut's overrides: where it publishes, then those of its own `flags` that were given.
fn shortcut_overrides(
    kafka: IngestKafkaArgs,
    flags: impl IntoIterator<Item = Option<Override>>,
) -> Vec<Override> {
    let mut overrides = kafka_overrides(kafka);
    overrides.extend(flags.into_iter().flatten());
    overrides
}

/// Unix seconds from RFC 3339, a date (`2026-11-20`, midnight UTC) or a number of seconds.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp());
    }
    bail!(
        "{text:?} is not a time: expected RFC 3339 (2026-11-20T00:00:00Z), a date (2026-11-20) or unix seconds"
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn ingest(args: &[&str]) -> anyhow::Result<(PathBuf, Vec<Override>)> {
        let cli = Cli::try_parse_from([&["coinstream", "ingest"], args].concat()).unwrap();
        let Command::Ingest(command) = cli.command else {
            panic!("{:?}", cli.command);
        };
        match command {
            IngestCommand::Coinbase(args) => coinbase(args),
            IngestCommand::Gateio(args) => gateio(args),
        }
    }

    fn set(key: &str, value: impl Into<toml::Value>, flag: &str) -> Override {
        Override::new(key, value).from_flag(flag)
    }

    #[test]
    fn every_coinbase_flag_given_sets_its_keys_after_the_kafka_ones() {
        let (pipeline, overrides) = ingest(&[
            "coinbase",
            "--checkpoint=/c",
            "--url=wss://x",
            "--products=A-USD,B-USD",
            "--feed=advanced",
            "--idle-timeout-ms=250",
            "--portfolio=/p.json",
            "--coin-map=/m.json",
            "--brokers=b:1",
            "--topic=t",
            "--compression=zstd",
        ])
        .unwrap();
        assert_eq!(pipeline, Path::new("pipelines/ingest-coinbase.toml"));
        assert_eq!(
            overrides,
            [
                set("sink.brokers", "b:1", "--brokers"),
                set("dead_letter.brokers", "b:1", "--brokers"),
                set("dead_letter.topic", "t_dead_letters", "--topic"),
                set("sink.topic", "t", "--topic"),
                set("sink.compression", "zstd", "--compression"),
                set("engine.checkpoint_dir", "/c", "--checkpoint"),
                set("source.url", "wss://x", "--url"),
                set(
                    "source.product_ids",
                    vec!["A-USD".to_owned(), "B-USD".to_owned()],
                    "--products"
                ),
                set("source.feed", "advanced", "--feed"),
                set("source.idle_timeout_ms", 250, "--idle-timeout-ms"),
                set("source.portfolio", "/p.json", "--portfolio"),
                set("source.coin_map", "/m.json", "--coin-map"),
            ]
        );
    }

    #[test]
    fn every_gateio_flag_given_sets_its_keys_and_flags_left_out_set_none() {
        let (pipeline, overrides) = ingest(&[
            "gateio",
            "--state=/s",
            "--url=http://x",
            "--pairs=A_USDT",
            "--interval=5m",
            "--from=2026-11-20",
            "--to=1700000000",
            "--once",
            "--portfolio=/p.json",
        ])
        .unwrap();
        assert_eq!(pipeline, Path::new("pipelines/ingest-gateio.toml"));
        assert_eq!(
            overrides,
            [
                set("engine.checkpoint_dir", "/s", "--state"),
                set("source.base_url", "http://x", "--url"),
                set(
                    "source.currency_pairs",
                    vec!["A_USDT".to_owned()],
                    "--pairs"
                ),
                set("source.interval", "5m", "--interval"),
                set("source.from_secs", 1_795_132_800, "--from"),
                set("source.to_secs", 1_700_000_000, "--to"),
                set("source.once", true, "--once"),
                set("source.portfolio", "/p.json", "--portfolio"),
            ]
        );
        assert_eq!(ingest(&["gateio"]).unwrap().1, []);
        assert_eq!(ingest(&["coinbase"]).unwrap().1, []);
    }

    #[test]
    fn a_bad_flag_value_names_the_flag() {
        let err = ingest(&["coinbase", &format!("--idle-timeout-ms={}", u64::MAX)]).unwrap_err();
        assert_eq!(err.to_string(), "--idle-timeout-ms is too large");
        let err = ingest(&["gateio", "--from=2026-11-20", "--to=soon"]).unwrap_err();
        assert_eq!(err.to_string(), "--to");
        assert!(
            format!("{err:#}").contains("\"soon\" is not a time"),
            "{err:#}"
        );
    }
}
