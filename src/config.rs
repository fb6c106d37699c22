//! The pipeline config file (TOML): read into raw structs, then validated into a [`Config`] whose
//! values cannot be wrong. Every problem is collected and reported at once, each naming its key and
//! the file. Relative paths are relative to the config file's folder.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use connectors::{DeadLetterConfig, SinkConfig, SourceConfig};
use engine::context::ContextOptions;
use engine::decimal::DecimalPolicy;
use engine::reference::ReferenceTable;
use engine::trigger::Trigger;
use serde::Deserialize;

/// Rows per batch unless the config says otherwise (Spark's `maxOffsetsPerTrigger`).
const DEFAULT_MAX_RECORDS_PER_BATCH: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    input: RawInput,
    #[serde(default)]
    reference: Vec<RawReference>,
    transforms: RawTransforms,
    source: SourceConfig,
    sink: SinkConfig,
    dead_letter: DeadLetterConfig,
    report: Option<RawReport>,
}

/// `[engine]`: when batches run and how big they get.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    /// `interval:<n>ms|s|m` or `available-now`; default `interval:500ms`.
    trigger: Option<String>,
    /// At most this many messages per batch; default 100000.
    max_records_per_batch: Option<usize>,
    /// Offsets and commit logs; without it a restart starts from the source's own position.
    checkpoint_dir: Option<PathBuf>,
    /// Threads one batch's query may use; default 1.
    target_partitions: Option<usize>,
}

/// `[input]`: the table decoded messages form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    /// The table name the SQL reads; default `trades`.
    table: Option<String>,
    /// Declared columns (`"<name> <type> [not null]"`); default the trade record.
    columns: Option<Vec<String>>,
    /// What a decimal with more fractional digits than its column's scale becomes:
    /// `round_half_up` (default, as Spark's `from_json`; counted in the progress) or `reject`
    /// (the message goes to the dead letters).
    decimal_policy: Option<String>,
}

/// `[[reference]]`: a JSON file keyed by id, loaded once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReference {
    name: String,
    path: PathBuf,
    /// The column the file's keys go into.
    key: String,
    /// Declared columns, when values are objects.
    columns: Option<Vec<String>>,
    /// The one declared column, when values are scalars.
    value: Option<String>,
}

/// `[transforms]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransforms {
    /// SQL files, planned in order (later ones may read earlier ones' views).
    files: Vec<PathBuf>,
    /// The transform whose rows go to the sink.
    output: String,
}

/// `[report]`: a query over the store printed at the end of a run that ends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    sql: PathBuf,
}

/// A validated config.
#[derive(Debug)]
pub struct Config {
    pub trigger: Trigger,
    pub max_records_per_batch: NonZeroUsize,
    pub checkpoint_dir: Option<PathBuf>,
    pub context: ContextOptions,
    pub input_table: String,
    pub input_schema: SchemaRef,
    pub decimal_policy: DecimalPolicy,
    pub references: Vec<ReferenceTable>,
    pub transform_files: Vec<PathBuf>,
    pub output: String,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    pub dead_letter: DeadLetterConfig,
    pub report: Option<PathBuf>,
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
#[error("config file {}:\n  - {}", file.display(), problems.join("\n  - "))]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            file: file.to_owned(),
            problems,
        };
        let text =
            std::fs::read_to_string(file).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
        Self::parse(file, &text)
    }

    /// Reads `file`, sets each of `overrides` (see [`set_key`]), then validates it as
    /// [`Config::load`] does. Problems name the file; a bad override names its key.
    pub fn load_with_overrides(file: &Path, overrides: &[Override]) -> Result<Self, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            file: file.to_owned(),
            problems,
        };
        let text =
            std::fs::read_to_string(file).map_err(|e| fail(vec![format!("cannot read: {e}")]))?;
        if overrides.is_empty() {
            return Self::parse(file, &text);
        }
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| fail(vec![e.to_string().trim().replace('\n', "\n    ")]))?;
        let problems: Vec<String> = overrides
            .iter()
            .filter_map(|o| set_key(&mut table, &o.key, o.value.clone()).err())
            .collect();
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let raw: RawConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| fail(vec![e.to_string().trim().to_owned()]))?;
        Self::from_raw(file, raw)
    }

    /// Validates `text`, the contents of `file` (relative paths in it are relative to `file`'s
    /// folder; `file` itself is not read).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            file: file.to_owned(),
            problems,
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| fail(vec![e.to_string().trim().replace('\n', "\n    ")]))?;
        Self::from_raw(file, raw)
    }

    fn from_raw(file: &Path, raw: RawConfig) -> Result<Self, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            file: file.to_owned(),
            problems,
        };
        let base = file.parent().map(Path::to_owned).unwrap_or_default();
        Self::validate(raw, &base).map_err(fail)
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let rebase = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_owned()
            }
        };

        let trigger = match raw.engine.trigger.as_deref().map(str::parse::<Trigger>) {
            None => Trigger::default(),
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                let message = match e {
                    engine::Error::Config { message, .. } => message,
                    other => other.to_string(),
                };
                problems.push(format!("engine.trigger: {message}"));
                Trigger::default()
            }
        };
        let max_records_per_batch = NonZeroUsize::new(
            raw.engine
                .max_records_per_batch
                .unwrap_or(DEFAULT_MAX_RECORDS_PER_BATCH),
        )
        .unwrap_or_else(|| {
            problems.push("engine.max_records_per_batch: must be at least 1".into());
            NonZeroUsize::MIN
        });
        let target_partitions = raw.engine.target_partitions.unwrap_or(1);
        if target_partitions == 0 {
            problems.push("engine.target_partitions: must be at least 1".into());
        }
        let context = ContextOptions {
            target_partitions: target_partitions.max(1),
            ..ContextOptions::default()
        };

        let input_table = raw.input.table.unwrap_or_else(|| "trades".into());
        let columns = raw
            .input
            .columns
            .unwrap_or_else(connectors::common::trade::trade_columns);
        let input_schema = engine::schema::parse_columns("input.columns", &columns)
            .map_err(|e| problems.push(strip_config_prefix(&e)));

        let decimal_policy = match raw.input.decimal_policy.as_deref().map(str::parse) {
            None => DecimalPolicy::default(),
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                problems.push(format!("input.decimal_policy: {e}"));
                DecimalPolicy::default()
            }
        };

        let mut references = Vec::new();
        for (i, r) in raw.reference.into_iter().enumerate() {
            let what = format!("reference[{i}] ({})", r.name);
            let (decls, scalar) = match (r.columns, r.value) {
                (Some(c), None) => (c, false),
                (None, Some(v)) => (vec![v], true),
                _ => {
                    problems.push(format!("{what}: declare exactly one of columns (object values) or value (scalar values)"));
                    continue;
                }
            };
            match engine::schema::parse_columns(&format!("{what}.columns"), &decls) {
                Ok(columns) => references.push(ReferenceTable {
                    name: r.name,
                    path: rebase(&r.path),
                    key_column: r.key,
                    columns,
                    scalar_values: scalar,
                }),
                Err(e) => problems.push(strip_config_prefix(&e)),
            }
        }

        if raw.transforms.files.is_empty() {
            problems.push("transforms.files: list at least one .sql file".into());
        }
        let transform_files: Vec<PathBuf> =
            raw.transforms.files.iter().map(|p| rebase(p)).collect();
        let stems: Vec<String> = transform_files
            .iter()
            .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
            .collect();
        if !stems.contains(&raw.transforms.output) {
            problems.push(format!(
                "transforms.output: {:?} is not one of the transforms ({})",
                raw.transforms.output,
                stems.join(", ")
            ));
        }

        let mut source = raw.source;
        source.rebase_paths(base);
        let mut sink = raw.sink;
        sink.rebase_paths(base);
        let mut dead_letter = raw.dead_letter;
        dead_letter.rebase_paths(base);
        if let Err(e) = dead_letter.validate() {
            problems.push(strip_config_prefix(&e));
        }
        let report = raw.report.map(|r| rebase(&r.sql));
        if report.is_some() && !matches!(sink, SinkConfig::Parquet(_)) {
            problems.push(
                "report: a report reads the Parquet store, so it needs sink.type = \"parquet\""
                    .into(),
            );
        }

        match input_schema {
            Ok(input_schema) if problems.is_empty() => Ok(Config {
                trigger,
                max_records_per_batch,
                checkpoint_dir: raw.engine.checkpoint_dir.map(|p| rebase(&p)),
                context,
                input_table,
                input_schema,
                decimal_policy,
                references,
                transform_files,
                output: raw.transforms.output,
                source,
                sink,
                dead_letter,
                report,
            }),
            _ => Err(problems),
        }
    }
}

/// One key of a config file set to a value, e.g. `source.url = "wss://…"` (a command-line flag
/// that stands for a key of a shipped pipeline file).
#[derive(Debug, Clone)]
pub struct Override {
    /// The dotted key path, e.g. `sink.topic`.
    pub key: String,
    /// The value, as it would be written in the file.
    pub value: toml::Value,
}

impl Override {
    /// `key = value`.
    pub fn new(key: &str, value: impl Into<toml::Value>) -> Self {
        Self {
            key: key.to_owned(),
            value: value.into(),
        }
    }
}

/// Sets the dotted `key` (e.g. `source.from_secs`) of a parsed file to `value`, creating the
/// tables on the way; fails, naming the key, when a part of the path is not a table.
pub fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop().filter(|l| !l.is_empty()) else {
        return Err(format!("{key}: not a key path"));
    };
    let mut current = table;
    for (i, part) in parts.iter().enumerate() {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(format!("{key}: {} is not a table", parts[..=i].join(".")));
            }
        };
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

/// Engine config errors already say "config: <key>: …"; inside a list of problems the prefix is noise.
fn strip_config_prefix(e: &engine::Error) -> String {
    let text = e.to_string();
    text.strip_prefix("config: ")
        .map(str::to_owned)
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn shipped_configs_validate() {
        for (name, output) in [
            ("coinstream.toml", "profit"),
            ("pipelines/kafka-cassandra.toml", "profit"),
            ("pipelines/kafka-cassandra-legacy.toml", "profit_legacy"),
            ("pipelines/candles-cassandra.toml", "candles"),
            ("pipelines/coinbase-embedded.toml", "profit"),
            ("pipelines/ingest-coinbase.toml", "passthrough"),
            ("pipelines/ingest-gateio.toml", "passthrough"),
        ] {
            let c = Config::load(&repo_root().join(name)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.output, output);
            for file in &c.transform_files {
                assert!(file.exists(), "{name}: {} exists", file.display());
            }
        }
    }

    #[test]
    fn reports_every_problem_with_its_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            r#"
[engine]
trigger = "sometimes"
max_records_per_batch = 0
[input]
columns = ["price money"]
decimal_policy = "truncate"
[transforms]
files = ["sql/profit.sql"]
output = "pnl"
[source]
type = "replay"
path = "x.jsonl"
coin_map = "c.json"
[sink]
type = "stdout"
[dead_letter]
type = "file"
path = "dl"
[report]
sql = "r.sql"
"#,
        )
        .unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("config file {}", file.display())),
            "{err}"
        );
        for expected in [
            "engine.trigger: \"sometimes\"",
            "engine.max_records_per_batch: must be at least 1",
            "input.columns: [0] \"price money\": unknown type",
            "input.decimal_policy: unknown decimal policy \"truncate\" (valid: round_half_up, reject)",
            "transforms.output: \"pnl\" is not one of the transforms (profit)",
            "report: a report reads the Parquet store",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }

    #[test]
    fn overrides_set_keys_of_the_file_and_name_the_bad_ones() {
        let file = repo_root().join("pipelines/ingest-gateio.toml");
        let c = Config::load_with_overrides(
            &file,
            &[
                Override::new("sink.topic", "candles_x"),
                Override::new("source.from_secs", 1_780_000_000),
                Override::new("engine.checkpoint_dir", "/tmp/cp"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let SinkConfig::Kafka(sink) = &c.sink else {
            panic!("{:?}", c.sink)
        };
        assert_eq!(sink.topic, "candles_x");
        let SourceConfig::Gateio(source) = &c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(source.from_secs, Some(1_780_000_000));
        assert_eq!(source.interval, "1m", "the file's value stays");
        assert_eq!(c.checkpoint_dir, Some(PathBuf::from("/tmp/cp")));

        let err = Config::load_with_overrides(
            &file,
            &[
                Override::new("sink.topic.name", "x"),
                Override::new("source.interval", 60),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ingest-gateio.toml"), "{err}");
        assert!(
            err.contains("sink.topic.name: sink.topic is not a table"),
            "{err}"
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[engine]\ntriger = \"available-now\"\n").unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(err.contains("unknown field `triger`"), "{err}");
    }

    #[test]
    fn rejects_an_unknown_dead_letter_compression_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        let config = |dead_letter: &str| {
            format!(
                "[transforms]\nfiles = [\"sql/profit.sql\"]\noutput = \"profit\"\n\
                 [source]\ntype = \"generate\"\nportfolio = \"p.json\"\ncoin_map = \"c.json\"\n\
                 [sink]\ntype = \"null\"\n[dead_letter]\ntype = \"kafka\"\ntopic = \"dl\"\n{dead_letter}"
            )
        };
        std::fs::write(&file, config("compression = \"brotli\"")).unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("dead_letter.compression: must be one of none, gzip, snappy, lz4, zstd"),
            "{err}"
        );
        std::fs::write(&file, config("compression = \"zstd\"")).unwrap();
        let loaded = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let DeadLetterConfig::Kafka(c) = loaded.dead_letter else {
            panic!("{:?}", loaded.dead_letter)
        };
        assert_eq!(c.compression, connectors::kafka::config::Compression::Zstd);
        std::fs::write(
            &file,
            config("properties = { \"compression.codec\" = \"gzip\" }"),
        )
        .unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(
            err.contains(
                "dead_letter.properties.compression.codec: set dead_letter.compression instead"
            ),
            "{err}"
        );
    }
}
