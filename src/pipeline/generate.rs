//! `coinstream generate`: trades from the portfolio's products, deterministic per seed, to a file
//! or a Kafka topic (test and benchmark input).

use std::io::Write;

use anyhow::{Context, bail};

use crate::cli::{GenerateArgs, GenerateFormat, ReferenceFileArgs};

/// How long `--topic` waits for a broker's first answer.
const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl ReferenceFileArgs {
    /// The portfolio and the coin map: the flags, else the paths of the reference tables
    /// `portfolio` and `coins` of `--config` (as `run` resolves them: against the config file's
    /// folder, so `generate` works from any folder given `--config`).
    ///
    /// # Errors
    /// The config does not load, or lacks a reference table a missing flag needs (naming the
    /// file).
    fn files(self) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let ReferenceFileArgs {
            portfolio,
            coin_map,
            config,
        } = self;
        if let (Some(portfolio), Some(coin_map)) = (&portfolio, &coin_map) {
            return Ok((portfolio.clone(), coin_map.clone()));
        }
        let loaded = coinstream::config::Config::load(&config).with_context(|| {
            format!(
                "--portfolio and --coin-map default to the reference tables of {}; pass both, or \
                 --config with a pipeline that declares them",
                config.display()
            )
        })?;
        let path = |name: &str, flag: &str| {
            loaded
                .references
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.path.clone())
                .with_context(|| {
                    format!(
                        "{}: no [[reference]] named {name:?} to take {flag} from; pass {flag}",
                        config.display()
                    )
                })
        };
        Ok((
            match portfolio {
                Some(p) => p,
                None => path("portfolio", "--portfolio")?,
            },
            match coin_map {
                Some(p) => p,
                None => path("coins", "--coin-map")?,
            },
        ))
    }
}

/// Writes generated trades to a file (feed frames or bus records) or publishes them to Kafka.
pub(super) async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let GenerateArgs {
        count,
        rate,
        out,
        topic,
        brokers,
        partitions,
        compression,
        format,
        seed,
        start,
        references,
    } = args;
    let (portfolio, coin_map) = references.files()?;
    if !(rate > 0.0 && rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    let spacing_us = (1e6 / rate) as i64;
    let start_us = match start {
        Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
            .context("--start must be RFC 3339")?
            .timestamp_micros(),
        None => chrono::Utc::now().timestamp_micros() - spacing_us * count as i64,
    };
    let mut generator = connectors::generate::Generator::from_files(
        &portfolio, &coin_map, seed, start_us, spacing_us,
    )?;
    let ingest_time = connectors::common::trade::rfc3339_micros(chrono::Utc::now());
    if let Some(topic) = topic {
        let brokers = brokers.unwrap_or_else(connectors::kafka::default_brokers);
        // Short-lived: an unreachable broker is one error below, not librdkafka's ERROR line
        // on each reconnect attempt.
        let producer = connectors::kafka::producer::TopicProducer::new(
            &brokers,
            &topic,
            compression,
            &Default::default(),
            None,
            connectors::kafka::producer::TransportFailures::Debug,
        )?;
        // Without a broker, librdkafka would retry each send until its delivery timeout
        // (minutes); one request tells within seconds. The topic is created before any metadata
        // request, which a broker that auto-creates topics would answer with a 1-partition one.
        match partitions {
            Some(partitions) => producer
                .create_topic(&brokers, partitions, BROKER_TIMEOUT)
                .await
                .with_context(|| format!("--brokers {brokers} --partitions {partitions}"))?,
            None => producer
                .check(BROKER_TIMEOUT)
                .await
                .with_context(|| format!("--brokers {brokers}: is Kafka running there?"))?,
        }
        let records = (0..count).map(|_| {
            let trade = generator.next_trade();
            let record = generator.record(&trade, &ingest_time);
            (record.symbol.to_string(), record.to_json())
        });
        let sent = producer.send_all(records).await?;
        eprintln!("published {sent} trades to {topic} on {brokers}");
        return Ok(());
    }
    let out = out.context("--out or --topic is required")?;
    let file =
        std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    match format {
        GenerateFormat::Feed => {
            connectors::generate::write_feed(&mut generator, count, &mut writer)?
        }
        GenerateFormat::Record => {
            for _ in 0..count {
                let trade = generator.next_trade();
                writer.write_all(&generator.record(&trade, &ingest_time).to_json())?;
                writer.write_all(b"\n")?;
            }
        }
    }
    writer.flush()?;
    eprintln!(
        "wrote {count} trades for {} products to {}",
        generator.product_count(),
        out.display()
    );
    Ok(())
}
