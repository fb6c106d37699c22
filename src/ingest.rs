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
    CoinbaseArgs, GateioArgs, IngestArgs, IngestCommand, IngestKafkaArgs, ProgressFormat,
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

/// `key` set to the unix seconds of the time flag `flag` (see [`parse_time`]); nothing when the
/// flag was left out.
fn time_override(key: &str, flag: &str, text: Option<&str>) -> anyhow::Result<Option<Override>> {
    let secs = text
        .map(parse_time)
        .transpose()
        .with_context(|| flag.to_owned())?;
    Ok(flag_override(key, flag, secs))
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

fn coinbase(args: IngestArgs<CoinbaseArgs>) -> anyhow::Result<(PathBuf, Vec<Override>)> {
    let source = args.source;
    // In flag order, so that of two bad flags the first is reported.
    let flags = [
        path_override(
            "engine.checkpoint_dir",
            "--checkpoint",
            source.checkpoint.as_deref(),
        )?,
        flag_override("source.url", "--url", source.url),
        flag_override("source.product_ids", "--products", list(source.products)),
        flag_override("source.feed", "--feed", source.feed),
        flag_override(
            "source.idle_timeout_ms",
            "--idle-timeout-ms",
            source
                .idle_timeout_ms
                .map(i64::try_from)
                .transpose()
                .context("--idle-timeout-ms is too large")?,
        ),
        path_override("source.portfolio", "--portfolio", args.portfolio.as_deref())?,
        path_override("source.coin_map", "--coin-map", source.coin_map.as_deref())?,
    ];
    Ok((args.pipeline, shortcut_overrides(args.kafka, flags)))
}

fn gateio(args: IngestArgs<GateioArgs>) -> anyhow::Result<(PathBuf, Vec<Override>)> {
    let source = args.source;
    // In flag order, so that of two bad flags the first is reported.
    let flags = [
        path_override("engine.checkpoint_dir", "--state", source.state.as_deref())?,
        flag_override("source.base_url", "--url", source.url),
        flag_override("source.currency_pairs", "--pairs", list(source.pairs)),
        flag_override("source.interval", "--interval", source.interval),
        time_override("source.from_secs", "--from", source.from.as_deref())?,
        time_override("source.to_secs", "--to", source.to.as_deref())?,
        flag_override("source.once", "--once", source.once.then_some(true)),
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

    /// `tests/fixtures/ingest_flags.toml`.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cases {
        case: Vec<Case>,
    }

    /// One invocation of `coinstream ingest` and what it should override.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        args: Vec<String>,
        pipeline: PathBuf,
        sets: Vec<Set>,
    }

    /// One override a case expects.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Set {
        key: String,
        value: toml::Value,
        flag: String,
    }

    #[test]
    fn every_flag_given_sets_its_keys_after_the_kafka_ones_and_flags_left_out_set_none() {
        let cases: Cases =
            toml::from_str(include_str!("../tests/fixtures/ingest_flags.toml")).unwrap();
        assert_eq!(cases.case.len(), 4);
        for Case {
            args,
            pipeline,
            sets,
        } in cases.case
        {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (got_pipeline, overrides) = ingest(&args).unwrap();
            assert_eq!(got_pipeline, pipeline, "{args:?}");
            let expected: Vec<Override> = sets
                .into_iter()
                .map(|set| Override::new(set.key, set.value).from_flag(set.flag))
                .collect();
            assert_eq!(overrides, expected, "{args:?}");
        }
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
