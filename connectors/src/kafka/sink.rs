//! `[sink] type = "kafka"`: each output row as one JSON object (Arrow's JSON encoding, the shape
//! of Spark's `to_json`: decimals as exact JSON numbers, timestamps as ISO 8601 text) on a topic,
//! keyed by the text of the `key` column, with the batching idempotent
//! producer of the ingesters and `compression` (default `lz4`).
//!
//! A batch counts as written only once Kafka acknowledged every one of its records; only then does
//! the source commit. A batch replayed after a crash is sent again, so the output is
//! at-least-once, as Spark's Kafka sink: consumers that need each row once key on its id.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use engine::{Error, Result, Sink};
use serde::Deserialize;

use super::config::Compression;
use super::producer::TopicProducer;

fn default_compression() -> Compression {
    Compression::Lz4
}

/// `sink.compression`.
fn sink_compression<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
    Compression::deserialize_key(d, "sink.compression")
}

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
    #[serde(default = "default_compression", deserialize_with = "sink_compression")]
    pub compression: Compression,
    /// Extra librdkafka producer properties (not the compression, which is `compression`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Write a null as `"column": null` instead of leaving the field out (Spark's `to_json`
    /// leaves it out, the default). The ingest pipelines set it: their records on the bus always
    /// carry every field.
    #[serde(default)]
    pub explicit_nulls: bool,
}

impl KafkaSinkConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<()> {
        if self.topic.trim().is_empty() {
            return Err(Error::config("sink.topic", "must not be empty"));
        }
        if self.key.trim().is_empty() {
            return Err(Error::config("sink.key", "must name an output column"));
        }
        Compression::refuse_in_properties("sink", &self.properties)
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

#[async_trait]
impl Sink for KafkaSink {
    fn description(&self) -> String {
        format!("kafka {}", self.config.topic)
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
