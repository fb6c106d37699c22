//! `[sink] type = "kafka"`: each output row as one JSON object (Arrow's JSON encoding, the shape
//! of Spark's `to_json`: decimals as exact JSON numbers, timestamps as ISO 8601 text) on a topic,
//! keyed by the text of the `key` column, with the batching idempotent producer and `compression`
//! (default `lz4`). The ingest pipelines (`pipelines/ingest-*.toml`) write their bus records with
//! it.
//!
//! A batch counts as written only once Kafka acknowledged every one of its records; only then does
//! the source commit. A batch replayed after a crash is sent again, so the output is
//! at-least-once, as Spark's Kafka sink: consumers that need each row once key on its id.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use engine::{Error, Result, Sink};
use serde::Deserialize;

use super::config::Compression;
use super::producer::{TopicProducer, TransportFailures};
use crate::common::config::Problem;

/// `[sink] type = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port,…`; default the `KAFKA_BOOTSTRAP` environment variable, else `127.0.0.1:9092`.
    pub brokers: Option<String>,
    /// The topic rows are written to.
    pub topic: String,
    /// The output column whose text keys each record (e.g. `symbol`, so one product's rows stay
    /// in order on one partition).
    pub key: String,
    /// `none`, `gzip`, `snappy`, `lz4` (default) or `zstd`.
    #[serde(default = "lz4")]
    pub compression: Compression,
    /// Extra librdkafka producer properties (not the compression, which is `compression`, nor
    /// secrets, which come from `security`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// TLS and SASL login (`[sink.security]`, see
    /// [`super::security::KafkaSecurityConfig`]). Default: none (plain TCP).
    #[serde(default)]
    pub security: Option<super::security::KafkaSecurityConfig>,
    /// Write a null as `"column": null` instead of leaving the field out (Spark's `to_json`
    /// leaves it out, the default). The ingest pipelines set it: their records on the bus always
    /// carry every field.
    #[serde(default)]
    pub explicit_nulls: bool,
}

/// The sink's default codec.
fn lz4() -> Compression {
    Compression::Lz4
}

impl KafkaSinkConfig {
    /// Every problem serde cannot see; keys are relative to the section.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.topic.trim().is_empty() {
            problems.push(Problem::new("topic", "must not be empty"));
        }
        if self.key.trim().is_empty() {
            problems.push(Problem::new("key", "must name an output column"));
        }
        problems.extend(Compression::refuse_in_properties("sink", &self.properties));
        problems.extend(super::security::problems(
            self.security.as_ref(),
            &self.properties,
        ));
        problems
    }

    /// [`KafkaSinkConfig::check`] as one error naming the `sink` section.
    pub fn validate(&self) -> Result<()> {
        match self.check() {
            problems if problems.is_empty() => Ok(()),
            problems => Err(Problem::into_error("sink", problems)),
        }
    }
}

/// The Kafka sink.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    producer: TopicProducer,
    /// Where the key column is in the output rows.
    key_index: usize,
}

impl KafkaSink {
    /// Builds the producer (it connects on the first send) for rows of `schema`; the key column
    /// must be one of its columns.
    pub fn new(config: KafkaSinkConfig, schema: &SchemaRef) -> Result<Self> {
        config.validate()?;
        let key_index = schema.index_of(&config.key).map_err(|_| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            Error::config(
                "sink.key",
                format!(
                    "the output has no column {:?} (it has {})",
                    config.key,
                    names.join(", ")
                ),
            )
        })?;
        let brokers = config
            .brokers
            .clone()
            .unwrap_or_else(super::default_brokers);
        let producer = TopicProducer::new(
            &brokers,
            &config.topic,
            config.compression,
            &config.properties,
            super::security::resolve("sink", config.security.as_ref())?,
            TransportFailures::Logged,
        )?;
        Ok(Self {
            config,
            producer,
            key_index,
        })
    }

    /// Each row of `batch` as `(key, JSON object)`.
    fn encode(&self, batch: &RecordBatch) -> Result<Vec<(String, Vec<u8>)>> {
        let mut json = Vec::new();
        {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(self.config.explicit_nulls)
                .build::<_, arrow::json::writer::LineDelimited>(&mut json);
            writer.write(batch)?;
            writer.finish()?;
        }
        let formatter =
            ArrayFormatter::try_new(batch.column(self.key_index).as_ref(), &FormatOptions::new())?;
        let keys: Vec<String> = (0..batch.num_rows())
            .map(|i| formatter.value(i).to_string())
            .collect();
        let rows: Vec<&[u8]> = json
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        if rows.len() != keys.len() {
            return Err(Error::Internal(format!(
                "JSON encoding gave {} lines for {} rows",
                rows.len(),
                keys.len()
            )));
        }
        Ok(keys
            .into_iter()
            .zip(rows)
            .map(|(key, row)| (key, row.to_vec()))
            .collect())
    }
}

/// How long the healthcheck waits for a broker to answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait]
impl Sink for KafkaSink {
    fn description(&self) -> String {
        format!("kafka {}", self.config.topic)
    }

    /// Fetches the topic's metadata, so an unreachable cluster is found before the source is
    /// read rather than at the first batch's delivery timeout.
    ///
    /// # Errors
    /// Transient when no broker answers within 10 s (the runtime waits for the cluster).
    async fn healthcheck(&mut self) -> Result<()> {
        self.producer.check(HEALTHCHECK_TIMEOUT).await
    }

    async fn write(&mut self, _batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        let mut messages = Vec::new();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            messages.extend(self.encode(batch)?);
        }
        if messages.is_empty() {
            return Ok(());
        }
        // The producer's errors already name `kafka <topic>`, this sink's description.
        self.producer.send_all(messages).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::trade::TradeRecord;
    use crate::gateio::candles::{CandleRecord, Ohlcv};
    use engine::RawRecord;

    /// The input table of a shipped pipeline: table `records` of its DDL file (the one
    /// `[tables] files` lists).
    fn input_columns(pipeline: &str) -> SchemaRef {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let path = root.join(pipeline);
        let file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let ddl = file["tables"]["files"][0].as_str().unwrap();
        let ddl = path.parent().unwrap().join(ddl);
        let text = std::fs::read_to_string(&ddl).unwrap();
        assert_eq!(file["input"]["table"].as_str(), Some("records"));
        engine::schema::ddl_table(&ddl.display().to_string(), &text, "records").unwrap()
    }

    /// What the shipped pipeline's sink writes for `payloads`: decoded with its input columns,
    /// then encoded as it encodes its rows (`sql/passthrough.sql` passes every column on as is).
    fn written(pipeline: &str, key: &str, payloads: &[Vec<u8>]) -> Vec<(String, Vec<u8>)> {
        let schema = input_columns(pipeline);
        let records: Vec<RawRecord> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawRecord {
                position: engine::RecordPosition::new(0, i as i64),
                payload: p.clone(),
                frame: None,
                rejected: None,
                received_at: std::time::SystemTime::now(),
            })
            .collect();
        let decoded = engine::decode::RecordDecoder::new(schema.clone())
            .decode(&records)
            .unwrap();
        assert!(decoded.dead_letters.is_empty());
        let config = KafkaSinkConfig {
            brokers: Some("127.0.0.1:1".into()),
            topic: "t".into(),
            key: key.into(),
            compression: Compression::Lz4,
            properties: BTreeMap::new(),
            security: None,
            explicit_nulls: true,
        };
        // The producer connects on the first send; encoding needs no broker.
        KafkaSink::new(config, &schema)
            .unwrap()
            .encode(&decoded.batch)
            .unwrap()
    }

    #[test]
    fn the_ingest_pipelines_write_the_bus_records_byte_for_byte() {
        let trades = [
            TradeRecord {
                symbol: "BTC-USD".into(),
                coin_name: Some("Bitcoin \"Ä\" \\ \u{1F600}".into()),
                trade_id: 9_007_199_254_740_993,
                sequence: Some(-1),
                trade_time: "2026-11-20T00:00:00.123456Z".into(),
                price: "104212.3500000000".into(),
                size: "1E-8".into(),
                side: "sell".into(),
                ingest_time: "2026-11-20T00:00:01.000000Z".into(),
            },
            TradeRecord {
                symbol: "ETH-USD".into(),
                coin_name: None,
                trade_id: 1,
                sequence: None,
                trade_time: "2026-11-20T00:00:00Z".into(),
                price: "0.00000000000000000001".into(),
                size: "12345678901234567890.123456789".into(),
                side: "buy".into(),
                ingest_time: "2026-11-20T00:00:01.000000Z".into(),
            },
        ];
        let payloads: Vec<Vec<u8>> = trades.iter().map(TradeRecord::to_json).collect();
        let out = written("pipelines/ingest-coinbase.toml", "symbol", &payloads);
        let expected: Vec<(String, Vec<u8>)> = trades
            .iter()
            .map(|t| (t.symbol.to_string(), t.to_json()))
            .collect();
        assert_eq!(
            out.iter()
                .map(|(k, p)| (k.clone(), String::from_utf8_lossy(p).into_owned()))
                .collect::<Vec<_>>(),
            expected
                .iter()
                .map(|(k, p)| (k.clone(), String::from_utf8_lossy(p).into_owned()))
                .collect::<Vec<_>>()
        );

        let candles = [
            CandleRecord {
                currency_pair: "BTC_USDT".into(),
                interval: "1m".into(),
                window_start: "2024-06-01T13:00:00Z".into(),
                ohlcv: Ohlcv {
                    open: "67715.1".into(),
                    high: "67839.90".into(),
                    low: "67715".into(),
                    close: "1e2".into(),
                    volume_base: None,
                    volume_quote: "1157762.86821200".into(),
                },
                ingest_time: "2024-06-01T13:01:00.000001Z".into(),
            },
            CandleRecord {
                currency_pair: "ETH_USDT".into(),
                interval: "7d".into(),
                window_start: "2024-06-03T00:00:00Z".into(),
                ohlcv: Ohlcv {
                    open: "-0".into(),
                    high: "3".into(),
                    low: "1".into(),
                    close: "2".into(),
                    volume_base: Some("0.0040".into()),
                    volume_quote: "0".into(),
                },
                ingest_time: "2024-06-10T00:00:02.500000Z".into(),
            },
        ];
        let payloads: Vec<Vec<u8>> = candles.iter().map(CandleRecord::to_json).collect();
        let out = written("pipelines/ingest-gateio.toml", "currency_pair", &payloads);
        for ((key, payload), candle) in out.iter().zip(&candles) {
            assert_eq!(key, &candle.currency_pair);
            assert_eq!(
                String::from_utf8_lossy(payload),
                String::from_utf8_lossy(&candle.to_json())
            );
        }
        assert_eq!(out.len(), candles.len());
    }
}
