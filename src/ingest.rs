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
    let (pipeline, overrides) = match command {
        IngestCommand::Coinbase(args) => coinbase(args)?,
        IngestCommand::Gateio(args) => gateio(args)?,
    };
    let config = Config::load_with(&pipeline, &overrides)?;
    crate::pipeline::run(config, ProgressFormat::Human).await
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

fn list(items: Vec<String>) -> toml::Value {
    toml::Value::Array(items.into_iter().map(toml::Value::from).collect())
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
    if let Some(codec) = compression {
        overrides
            .push(Override::new("sink.compression", codec.as_str()).from_flag("--compression"));
    }
    overrides
}

fn coinbase(args: IngestCoinbaseArgs) -> anyhow::Result<(PathBuf, Vec<Override>)> {
    let mut overrides = kafka_overrides(args.kafka);
    overrides.extend(path_override(
        "engine.checkpoint_dir",
        "--checkpoint",
        args.checkpoint.as_deref(),
    )?);
    if let Some(url) = args.url {
        overrides.push(Override::new("source.url", url).from_flag("--url"));
    }
    if !args.products.is_empty() {
        overrides
            .push(Override::new("source.product_ids", list(args.products)).from_flag("--products"));
    }
    if let Some(feed) = args.feed {
        overrides.push(Override::new("source.feed", feed).from_flag("--feed"));
    }
    if let Some(ms) = args.idle_timeout_ms {
        let ms = i64::try_from(ms).context("--idle-timeout-ms is too large")?;
        overrides.push(Override::new("source.idle_timeout_ms", ms).from_flag("--idle-timeout-ms"));
    }
    overrides.extend(path_override(
        "source.portfolio",
        "--portfolio",
        args.portfolio.as_deref(),
    )?);
    overrides.extend(path_override(
        "source.coin_map",
        "--coin-map",
        args.coin_map.as_deref(),
    )?);
    Ok((args.pipeline, overrides))
}

fn gateio(args: IngestGateioArgs) -> anyhow::Result<(PathBuf, Vec<Override>)> {
    let mut overrides = kafka_overrides(args.kafka);
    overrides.extend(path_override(
        "engine.checkpoint_dir",
        "--state",
        args.state.as_deref(),
    )?);
    if let Some(url) = args.url {
        overrides.push(Override::new("source.base_url", url).from_flag("--url"));
    }
    if !args.pairs.is_empty() {
        overrides
            .push(Override::new("source.currency_pairs", list(args.pairs)).from_flag("--pairs"));
    }
    if let Some(interval) = args.interval {
        overrides.push(Override::new("source.interval", interval).from_flag("--interval"));
    }
    if let Some(from) = &args.from {
        overrides.push(
            Override::new("source.from_secs", parse_time(from).context("--from")?)
                .from_flag("--from"),
        );
    }
    if let Some(to) = &args.to {
        overrides.push(
            Override::new("source.to_secs", parse_time(to).context("--to")?).from_flag("--to"),
        );
    }
    if args.once {
        overrides.push(Override::new("source.once", true).from_flag("--once"));
    }
    overrides.extend(path_override(
        "source.portfolio",
        "--portfolio",
        args.portfolio.as_deref(),
    )?);
    Ok((args.pipeline, overrides))
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
