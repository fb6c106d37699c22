//! The pipeline config file (TOML), read one way for every command (`run`, `explain`, `query`,
//! `ingest`), the sqllogictest runner and the tests: [`Config::load`], or [`Config::load_with`]
//! and a list of [`Override`]s of its keys.
//!
//! Every section is read on its own, so a type error in `[sink]` does not hide a bad `[input]`;
//! then each connector checks what serde cannot see. Every problem of the file is reported in one
//! [`ConfigError`], each with its key path (`sink.ttl_secs: must be at least 1`). Relative paths are
//! relative to the config file's folder. Every file the config names as input (transforms,
//! report, reference data, a capture, a coin map) must be a readable file at load. Checks against
//! the output transform's columns (a Cassandra key or a Parquet partition column that the SQL does
//! not produce) need the SQL planned and happen when the sink is built, before the source is read.

mod overrides;
mod tables;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use connectors::common::config::{self as plumbing, Problem};
use connectors::{DeadLetterConfig, SinkConfig, SourceConfig, StateConfig};
use engine::context::ContextOptions;
use engine::decimal::DecimalPolicy;
use engine::reference::ReferenceTable;
use engine::stateful::{OutputMode, Watermark};
use engine::trigger::Trigger;
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use overrides::Override;

/// The sections a config file may have, in the order the README documents them.
pub const SECTIONS: [&str; 10] = [
    "engine",
    "tables",
    "input",
    "reference",
    "transforms",
    "source",
    "sink",
    "dead_letter",
    "state",
    "report",
];

/// `[engine]`: when batches run and how big they get.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// `interval:<n>ms|s|m` or `available-now`; default `interval:500ms`.
    #[serde(deserialize_with = "trigger")]
    pub trigger: Trigger,
    /// At most this many messages per batch (Spark's `maxOffsetsPerTrigger`); default 50000.
    #[serde(deserialize_with = "plumbing::at_least_one")]
    pub max_records_per_batch: NonZeroUsize,
    /// Offsets and commit logs; without it a restart starts from the source's own position.
    #[serde(deserialize_with = "plumbing::optional_path")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Threads one batch's query may use; default 1 (the engine reads it from
    /// [`Config::context`]).
    #[serde(deserialize_with = "plumbing::at_least_one")]
    pub target_partitions: NonZeroUsize,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            trigger: Trigger::default(),
            // A capture read at 50,000 a batch runs as fast as at 100,000 with a third less
            // peak RSS (bench/results/2026-12-03-batch-size.md).
            max_records_per_batch: NonZeroUsize::new(50_000).unwrap_or(NonZeroUsize::MIN),
            checkpoint_dir: None,
            target_partitions: NonZeroUsize::MIN,
        }
    }
}

/// `[input]`: the table decoded messages form.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct InputSection {
    /// The table the SQL reads, as declared in `[tables]`; default `trades` (without `[tables]`,
    /// the bus trade record of `sql/tables/trades.sql`).
    table: String,
    /// Deprecated: the columns in the mini-language (`"<name> <type> [not null]"`), instead of a
    /// table of `[tables]`.
    columns: Option<Vec<String>>,
    /// What a decimal with more fractional digits than its column's scale becomes:
    /// `round_half_up` (default, as Spark's `from_json`; counted in the progress) or `reject`
    /// (the message goes to the dead letters).
    #[serde(deserialize_with = "from_str")]
    decimal_policy: DecimalPolicy,
    /// The event-time watermark (Spark's `withWatermark`) of a query that aggregates by window.
    watermark: Option<WatermarkSection>,
}

impl Default for InputSection {
    fn default() -> Self {
        Self {
            table: "trades".into(),
            columns: None,
            decimal_policy: DecimalPolicy::default(),
            watermark: None,
        }
    }
}

/// `input.watermark = { column = "trade_time", delay = "10s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatermarkSection {
    /// The input table's event-time column (a timestamp).
    column: String,
    /// How far behind the largest event time seen a row may arrive and still count
    /// (humantime: `"10s"`, `"2m"`).
    #[serde(deserialize_with = "plumbing::millis")]
    delay: std::time::Duration,
    /// Whether rows dropped as late also go to the dead letters (default false: counted in
    /// the progress only, as Spark does).
    #[serde(default)]
    dead_letter: bool,
}

/// `[transforms]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformsSection {
    /// SQL files, planned in order (later ones may read earlier ones' views).
    #[serde(deserialize_with = "plumbing::paths")]
    pub files: Vec<PathBuf>,
    /// The transform whose rows go to the sink (a file stem of `files`).
    pub output: String,
    /// When an aggregating query's groups go to the sink: `append` (default; each window once,
    /// when the watermark passes its end) or `update` (every group a batch changed).
    #[serde(default, deserialize_with = "from_str")]
    pub output_mode: OutputMode,
}

/// `[report]`: a query over the store printed at the end of a run that ends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportSection {
    #[serde(deserialize_with = "plumbing::path")]
    sql: PathBuf,
}

/// A config whose every section was read and checked.
#[derive(Debug)]
pub struct Config {
    /// `[engine]`: when batches run, how big they get, where the checkpoint is.
    pub engine: EngineSection,
    /// The engine's session options (`engine.target_partitions`).
    pub context: ContextOptions,
    /// The input table's event-time watermark, if any.
    pub watermark: Option<Watermark>,
    /// The input table's name.
    pub input_table: String,
    /// The input table's columns.
    pub input_schema: SchemaRef,
    /// What an over-precise decimal becomes.
    pub decimal_policy: DecimalPolicy,
    /// Reference tables, loaded once.
    pub references: Vec<ReferenceTable>,
    /// `[transforms]`: the SQL files in planning order, the one whose rows go to the sink, and
    /// when an aggregating query's groups go there.
    pub transforms: TransformsSection,
    /// `[source]`.
    pub source: SourceConfig,
    /// `[sink]`.
    pub sink: SinkConfig,
    /// `[state]`: where a stateful query shares its state between instances, if anywhere.
    pub state: Option<StateConfig>,
    /// `[dead_letter]`.
    pub dead_letter: DeadLetterConfig,
    /// `[report]`'s SQL file, if any.
    pub report: Option<PathBuf>,
}

/// Everything wrong with a config file, each problem with its key path.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(file, problems, overrides))]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// What is wrong, in file order (section by section).
    pub problems: Vec<Problem>,
    /// The overrides set over the file, so a problem with a key one of them set names it.
    pub overrides: Vec<Override>,
}

/// One line per problem, each naming the file: `coinstream.toml: sink.ttl_secs: must be at least 1`;
/// a key whose value an override set says so, since the file does not hold that value:
/// `coinstream.toml: sink.ttl_secs (from --set sink.ttl_secs=0): must be at least 1`.
fn lines(file: &Path, problems: &[Problem], overrides: &[Override]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| match overrides::origin_of(overrides, &p.key) {
            Some(o) => format!(
                "{}: {} (from {}): {}",
                file.display(),
                p.key,
                o.origin(),
                p.message
            ),
            None => format!("{}: {p}", file.display()),
        })
        .collect();
    lines.join("\n")
}

impl Config {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_with(file, &[])
    }

    /// Reads `file`, sets `overrides` (in order) and checks the result.
    pub fn load_with(file: &Path, overrides: &[Override]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            problems: vec![Problem::new("", format!("cannot read: {e}"))],
            overrides: Vec::new(),
        })?;
        Self::parse_with(file, &text, overrides)
    }

    /// Checks `text`, the contents of `file` (relative paths in it are relative to `file`'s
    /// folder; `file` itself is not read).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(file, text, &[])
    }

    /// [`Config::parse`] with `overrides` set first.
    pub fn parse_with(
        file: &Path,
        text: &str,
        overrides: &[Override],
    ) -> Result<Self, ConfigError> {
        // The problems of setting the overrides name them already ("cannot override").
        let fail = |problems| ConfigError {
            file: file.to_owned(),
            problems,
            overrides: Vec::new(),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            fail(vec![Problem::new(
                "",
                e.to_string().trim().replace('\n', "\n    "),
            )])
        })?;
        let problems = overrides::apply(&mut table, overrides);
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let base = file.parent().map(Path::to_owned).unwrap_or_default();
        plumbing::with_base_dir(&base, || Self::read(table)).map_err(|problems| ConfigError {
            overrides: overrides.to_vec(),
            ..fail(problems)
        })
    }

    fn read(mut table: toml::Table) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(Problem::new(
                    plumbing::toml_key(key),
                    format!("unknown section; expected one of {}", SECTIONS.join(", ")),
                ));
            }
        }
        let mut take = |name: &str| table.remove(name);

        let engine: Option<EngineSection> = optional(&mut problems, "engine", take("engine"));
        let tables: Option<Option<tables::TablesSection>> =
            optional(&mut problems, "tables", take("tables"));
        let input: Option<InputSection> = optional(&mut problems, "input", take("input"));
        let references: Option<Vec<tables::ReferenceSection>> =
            optional(&mut problems, "reference", take("reference"));
        let transforms: Option<TransformsSection> = required(
            &mut problems,
            "transforms",
            take("transforms"),
            plumbing::from_toml,
        );
        let source = required(&mut problems, "source", take("source"), |_, v| {
            SourceConfig::from_toml(v)
        });
        let sink = required(&mut problems, "sink", take("sink"), |_, v| {
            SinkConfig::from_toml(v)
        });
        let dead_letter = required(&mut problems, "dead_letter", take("dead_letter"), |_, v| {
            DeadLetterConfig::from_toml(v)
        });
        let report: Option<Option<ReportSection>> =
            optional(&mut problems, "report", take("report"));
        let state: Option<Option<StateConfig>> = optional(&mut problems, "state", take("state"));
        if let (Some(Some(st)), Some(sink)) = (&state, &sink) {
            problems.extend(st.check(sink).into_iter().map(|p| p.under("state")));
        }

        // A `[tables]` that does not read declares nothing, and its problem is reported: the
        // sections naming its tables are not checked against it.
        let declared = tables.map(|t| tables::Declared::read(&mut problems, t));
        let input_schema = match (&input, &declared) {
            (Some(i), Some(d)) => d.input(&mut problems, &i.table, i.columns.as_deref()),
            _ => None,
        };
        if let (Some(w), Some(schema)) = (
            input.as_ref().and_then(|i| i.watermark.as_ref()),
            &input_schema,
        ) {
            match schema.field_with_name(&w.column) {
                Ok(f) if matches!(f.data_type(), arrow::datatypes::DataType::Timestamp(..)) => {}
                Ok(f) => problems.push(Problem::new(
                    "input.watermark.column",
                    format!("{:?} is a {}, not a timestamp", w.column, f.data_type()),
                )),
                Err(_) => problems.push(Problem::new(
                    "input.watermark.column",
                    format!(
                        "{:?} is not a column of the input table ({})",
                        w.column,
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
        for (i, r) in references.iter().flatten().enumerate() {
            problems.extend(plumbing::readable_file(
                &format!("reference[{i}].path"),
                &r.path,
            ));
        }
        let mut reference_tables = Vec::new();
        if let Some(d) = &declared {
            for (i, r) in references.into_iter().flatten().enumerate() {
                reference_tables.extend(d.reference(&mut problems, i, r));
            }
        }
        if let Some(t) = &transforms {
            check_transforms(&mut problems, t);
        }
        for (section, found) in [
            ("source", source.as_ref().map(SourceConfig::check)),
            ("sink", sink.as_ref().map(SinkConfig::check)),
            (
                "dead_letter",
                dead_letter.as_ref().map(DeadLetterConfig::check),
            ),
        ] {
            problems.extend(found.into_iter().flatten().map(|p| p.under(section)));
        }
        let report = report.flatten().map(|r| r.sql);
        if let Some(sql) = &report {
            problems.extend(plumbing::readable_file("report.sql", sql));
        }
        if report.is_some()
            && sink
                .as_ref()
                .is_some_and(|s| !matches!(s, SinkConfig::Delta(_) | SinkConfig::Parquet(_)))
        {
            problems.push(Problem::new(
                "report",
                "a report reads the embedded store, so it needs sink.type = \"delta\" or \"parquet\"",
            ));
        }

        match (
            engine,
            input,
            input_schema,
            transforms,
            source,
            sink,
            dead_letter,
        ) {
            (
                Some(engine),
                Some(input),
                Some(input_schema),
                Some(transforms),
                Some(source),
                Some(sink),
                Some(dead_letter),
            ) if problems.is_empty() => Ok(Config {
                context: ContextOptions {
                    target_partitions: engine.target_partitions.get(),
                    ..ContextOptions::default()
                },
                engine,
                watermark: input.watermark.map(|w| Watermark {
                    column: w.column,
                    delay: w.delay,
                    dead_letter_late: w.dead_letter,
                }),
                input_table: input.table,
                input_schema,
                decimal_policy: input.decimal_policy,
                references: reference_tables,
                transforms,
                source,
                sink,
                state: state.flatten(),
                dead_letter,
                report,
            }),
            _ => Err(problems),
        }
    }
}

/// Reads an optional section: its defaults when absent, `None` (and a problem) when wrong.
fn optional<T: DeserializeOwned + Default>(
    problems: &mut Vec<Problem>,
    name: &str,
    value: Option<toml::Value>,
) -> Option<T> {
    match value {
        None => Some(T::default()),
        Some(v) => plumbing::from_toml(name, v)
            .map_err(|p| problems.push(p))
            .ok(),
    }
}

/// Reads a required section with `read`; a missing or wrong section is a problem.
fn required<T>(
    problems: &mut Vec<Problem>,
    name: &str,
    value: Option<toml::Value>,
    read: impl FnOnce(&str, toml::Value) -> Result<T, Problem>,
) -> Option<T> {
    let Some(value) = value else {
        problems.push(Problem::new(name, "missing section"));
        return None;
    };
    read(name, value).map_err(|p| problems.push(p)).ok()
}

fn check_transforms(problems: &mut Vec<Problem>, t: &TransformsSection) {
    if t.files.is_empty() {
        problems.push(Problem::new(
            "transforms.files",
            "list at least one .sql file",
        ));
    }
    for (i, file) in t.files.iter().enumerate() {
        problems.extend(plumbing::readable_file(
            &format!("transforms.files[{i}]"),
            file,
        ));
    }
    let stems: Vec<&str> = t
        .files
        .iter()
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()))
        .collect();
    if !stems.contains(&t.output.as_str()) {
        problems.push(Problem::new(
            "transforms.output",
            format!(
                "{:?} is not one of the transforms ({})",
                t.output,
                stems.join(", ")
            ),
        ));
    }
}

/// `engine.trigger`: engine's own parser, without its `config: trigger:` prefix.
fn trigger<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Trigger, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|e| {
        serde::de::Error::custom(match e {
            engine::Error::Config { message, .. } => message,
            other => other.to_string(),
        })
    })
}

/// A value read from text by its [`std::str::FromStr`].
fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err: std::fmt::Display>,
{
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn shipped_configs_validate() {
        let mut files = vec![repo_root().join("coinstream.toml")];
        for entry in std::fs::read_dir(repo_root().join("pipelines")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
        assert!(files.len() >= 5, "{files:?}");
        for file in files {
            // Every section, the connectors' own checks included (they read the files named).
            let c = Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
            for sql in c.transforms.files.iter().chain(&c.report) {
                assert!(sql.exists(), "{}: {} exists", file.display(), sql.display());
            }
            for r in &c.references {
                assert!(
                    r.path.exists(),
                    "{}: {} exists",
                    file.display(),
                    r.path.display()
                );
            }
        }
        let c = Config::load(&repo_root().join("pipelines/candles-cassandra.toml")).unwrap();
        assert_eq!(c.transforms.output, "candles");
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
        let err = Config::load(&file).unwrap_err();
        let text = err.to_string();
        for line in text.lines() {
            assert!(line.starts_with(&format!("{}: ", file.display())), "{line}");
        }
        for expected in [
            // serde stops at a section's first error (keys are read in name order): the batch
            // size hides the trigger.
            "engine.max_records_per_batch: must be at least 1",
            "input.decimal_policy: unknown decimal policy \"truncate\" (valid: round_half_up, reject)",
            "transforms.output: \"pnl\" is not one of the transforms (profit)",
            "source.coin_map: io on ",
            "report: a report reads the embedded store",
            // Every input file is checked at load, with the OS's reason.
            "transforms.files[0]: cannot read ",
            "sql/profit.sql: No such file or directory",
            "source.path: cannot read ",
            "x.jsonl: No such file or directory",
            "report.sql: cannot read ",
            "r.sql: No such file or directory",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(err.problems.len(), 8, "{text}");
    }

    #[test]
    fn rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[engine]\ntriger = \"available-now\"\n").unwrap();
        let err = Config::load(&file).unwrap_err();
        assert!(
            err.problems
                .iter()
                .any(|p| p.key == "engine.triger" && p.message.contains("unknown field `triger`")),
            "{err}"
        );
    }

    #[test]
    fn rejects_an_unknown_dead_letter_compression_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        let repo = repo_root().display().to_string();
        let config = |dead_letter: &str| {
            format!(
                "[transforms]\nfiles = [\"{repo}/sql/profit.sql\"]\noutput = \"profit\"\n\
                 [source]\ntype = \"generate\"\nportfolio = \"{repo}/required_data/my_Portfolio.json\"\n\
                 coin_map = \"{repo}/required_data/coin_map.json\"\ncount = 1\n\
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

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn reports_problems_of_three_sections_with_key_paths_in_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::fs::read_to_string(repo_root().join("pipelines/kafka-cassandra.toml"))
            .unwrap()
            .replace("\"../", &format!("\"{}/", repo_root().display()));
        let file = write(&dir, &shipped);
        let err = Config::load_with(
            &file,
            &[
                Override::new("engine.target_partitions", 0),
                Override::new("source.topics", toml::Value::Array(Vec::new())),
                Override::new("source.group_id", ""),
                Override::new("sink.ttl_secs", 0),
                Override::new("dead_letter.topic", " "),
            ],
        )
        .unwrap_err();
        let problems: Vec<String> = err.problems.iter().map(Problem::to_string).collect();
        assert_eq!(
            problems,
            [
                "engine.target_partitions: must be at least 1",
                "sink.ttl_secs: must be at least 1",
                "source.topics: list at least one topic, none empty",
                "source.group_id: must not be empty",
                "dead_letter.topic: must not be empty",
            ]
        );
    }

    #[test]
    fn overrides_change_the_shipped_file_and_paths_stay_relative_to_it() {
        let file = repo_root().join("pipelines/kafka-cassandra.toml");
        let c = Config::load_with(
            &file,
            &[
                Override::new("source.topics", vec!["t1"]),
                Override::new("sink.keyspace", "ks_test"),
                "engine.checkpoint_dir=ck".parse().unwrap(),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let SourceConfig::Kafka(source) = &c.source else {
            panic!("{:?}", c.source)
        };
        assert_eq!(source.topics, ["t1"]);
        let SinkConfig::Cassandra(sink) = &c.sink else {
            panic!("{:?}", c.sink)
        };
        assert_eq!(sink.keyspace, "ks_test");
        assert_eq!(
            c.engine.checkpoint_dir,
            Some(repo_root().join("pipelines/ck"))
        );
        assert_eq!(
            c.references[0].path,
            repo_root().join("pipelines/../required_data/my_Portfolio.json")
        );
    }

    #[test]
    fn an_override_of_a_value_that_is_not_a_table_names_the_key() {
        let err = Config::load_with(
            &repo_root().join("coinstream.toml"),
            &[Override::new("engine.trigger.every", "1s")],
        )
        .unwrap_err();
        assert_eq!(
            err.problems,
            [Problem::new(
                "engine.trigger.every",
                "cannot override: engine.trigger is a string, not a table"
            )]
        );
    }

    #[test]
    fn unknown_and_missing_sections_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "[egnine]\n[sink]\ntype = \"null\"\n");
        let problems: Vec<String> = Config::load(&file)
            .unwrap_err()
            .problems
            .iter()
            .map(Problem::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "egnine: unknown section; expected one of engine, tables, input, reference, \
                 transforms, source, sink, dead_letter, state, report",
                "transforms: missing section",
                "source: missing section",
                "dead_letter: missing section",
            ]
        );
    }

    /// The shipped `coinstream.toml` as a table, its relative paths made absolute so that a copy
    /// written anywhere loads.
    fn shipped_table() -> toml::Table {
        let root = repo_root().display().to_string();
        let text = std::fs::read_to_string(repo_root().join("coinstream.toml"))
            .unwrap()
            .replace("\"required_data/", &format!("\"{root}/required_data/"))
            .replace("\"sql/", &format!("\"{root}/sql/"));
        toml::from_str(&text).unwrap()
    }

    /// The shipped `coinstream.toml` with its `[tables]` taken out (an override cannot remove a
    /// key), so the deprecated keys declare the tables on their own.
    fn without_tables(dir: &tempfile::TempDir) -> PathBuf {
        let mut table = shipped_table();
        assert!(table.remove("tables").is_some());
        write(dir, &toml::to_string(&table).unwrap())
    }

    #[test]
    fn keys_that_are_not_bare_are_named_as_written_in_toml() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "[\"\"]\n[\"a.b\"]\n[engine]\n\"max records\" = 1\n");
        let problems = Config::load(&file).unwrap_err().problems;
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"\"\""), "{keys:?}");
        assert!(keys.contains(&"\"a.b\""), "{keys:?}");
        assert!(keys.contains(&"engine.\"max records\""), "{keys:?}");
    }

    #[test]
    fn column_declarations_are_checked_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = without_tables(&dir);
        std::fs::write(dir.path().join("r.json"), "{}").unwrap();
        let err = Config::load_with(
            &file,
            &[
                Override::new("input.columns", vec!["a int64", "b money", "a utf8"]),
                Override::new(
                    "reference",
                    toml::Value::Array(vec![toml::Value::Table(
                        toml::from_str(
                            "name = \"r\"\npath = \"r.json\"\nkey = \"k\"\ncolumns = []\nvalue = \"v utf8\"",
                        )
                        .unwrap(),
                    )]),
                ),
            ],
        )
        .unwrap_err();
        let problems: Vec<String> = err.problems.iter().map(Problem::to_string).collect();
        assert!(
            problems[0].starts_with("input.columns[1]: \"b money\": unknown type"),
            "{problems:?}"
        );
        assert_eq!(problems[1], "input.columns[2]: column a is declared twice");
        assert!(
            problems[2].starts_with("reference[0]: \"r\": declare exactly one of columns"),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn deprecated_column_keys_declare_the_same_tables_as_the_ddl() {
        let dir = tempfile::tempdir().unwrap();
        let root = repo_root().display().to_string();
        let ddl =
            Config::load(&repo_root().join("coinstream.toml")).unwrap_or_else(|e| panic!("{e}"));
        // The mini-language the shipped files used before the DDL, word for word.
        let legacy = Config::load_with(
            &without_tables(&dir),
            &[
                Override::new(
                    "input.columns",
                    vec![
                        "symbol utf8 not null",
                        "coin_name utf8",
                        "trade_id int64 not null",
                        "sequence int64",
                        "trade_time timestamp(us) not null",
                        "price decimal(28,10) not null",
                        "size decimal(28,10) not null",
                        "side utf8 not null",
                        "ingest_time timestamp(us)",
                    ],
                ),
                Override::new(
                    "reference",
                    toml::Value::Array(
                        [
                            format!(
                                "name = \"portfolio\"\npath = \"{root}/required_data/my_Portfolio.json\"\n\
                                 key = \"symbol\"\ncolumns = [\"coin_name utf8 not null\", \
                                 \"buy_price decimal(28,10) not null\", \"size decimal(28,10) not null\", \
                                 \"buy_time timestamp(ms) not null\"]"
                            ),
                            format!(
                                "name = \"coins\"\npath = \"{root}/required_data/coin_map.json\"\n\
                                 key = \"symbol\"\nvalue = \"coin_name utf8 not null\""
                            ),
                        ]
                        .iter()
                        .map(|t| toml::Value::Table(toml::from_str(t).unwrap()))
                        .collect(),
                    ),
                ),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(legacy.input_schema, ddl.input_schema);
        assert_eq!(legacy.references[0].path, ddl.references[0].path);
        assert_eq!(legacy.references.len(), 2);
        for (old, new) in legacy.references.iter().zip(&ddl.references) {
            assert_eq!(old.name, new.name);
            assert_eq!(old.schema(), new.schema(), "{}", old.name);
            assert_eq!(old.scalar_values, new.scalar_values, "{}", old.name);
        }
        assert!(ddl.references[1].scalar_values, "coins maps keys to names");

        // Without [tables], the input table defaults to the built-in bus record.
        let file = write(
            &dir,
            &format!(
                "[transforms]\nfiles = [\"{root}/sql/passthrough.sql\"]\noutput = \"passthrough\"\n\
                 [source]\ntype = \"null_source_for_test\"\n[sink]\ntype = \"null\"\n\
                 [dead_letter]\ntype = \"file\"\npath = \"dl\"\n"
            ),
        );
        let err = Config::load(&file).unwrap_err();
        assert!(
            err.problems.iter().all(|p| p.key.starts_with("source")),
            "only the source is wrong: {err}"
        );
    }

    #[test]
    fn ddl_mistakes_are_problems_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad_type = dir.path().join("bad_type.sql");
        std::fs::write(&bad_type, "CREATE TABLE trades (price MONEY NOT NULL)").unwrap();
        let unparsable = dir.path().join("unparsable.sql");
        std::fs::write(
            &unparsable,
            "CREATE TABLE trades (price DECIMAL(28,10) NOT NULL",
        )
        .unwrap();
        let reference = repo_root().join("sql/tables/reference.sql");
        let shipped = repo_root().join("coinstream.toml");
        let load = |files: Vec<String>, input: &str| {
            Config::load_with(
                &shipped,
                &[
                    Override::new("tables.files", files),
                    Override::new("input.table", input),
                ],
            )
            .unwrap_err()
            .problems
            .iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
        };
        let shown = |p: &Path| p.display().to_string();

        // A file that fails is the only problem, named by its key and path: the input table may
        // well be in the file that failed, so "no table trades" would send the reader after a
        // mistake they did not make.
        let only_problem = |file: &Path, after: &str| {
            let problems = load(vec![shown(file), shown(&reference)], "trades");
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].starts_with(&format!("tables.files[0]: {}: {after}", file.display())),
                "{problems:?}"
            );
            problems[0].clone()
        };
        let problem = only_problem(&bad_type, "table trades, column price: ");
        assert!(problem.contains("MONEY"), "{problem}");
        only_problem(&unparsable, "does not parse: ");
        only_problem(&dir.path().join("missing.sql"), "cannot read: ");

        let trades = repo_root().join("sql/tables/trades.sql");
        let problems = load(vec![shown(&trades)], "trades");
        let missing = |name: &str, i: usize| {
            format!(
                "reference[{i}].name: no table \"{name}\" in {}; declared there: trades",
                trades.display()
            )
        };
        assert_eq!(problems, [missing("portfolio", 0), missing("coins", 1)]);

        let problems = load(
            vec![shown(&trades), shown(&reference), shown(&trades)],
            "trades",
        );
        assert_eq!(
            problems,
            [format!(
                "tables.files[2]: {0}: table trades is also declared in {0}",
                trades.display()
            )]
        );

        let keyed = dir.path().join("keyed.sql");
        std::fs::write(
            &keyed,
            "CREATE TABLE portfolio (coin_name VARCHAR NOT NULL, symbol VARCHAR NOT NULL);\n\
             CREATE TABLE coins (symbol VARCHAR NOT NULL, coin_name VARCHAR NOT NULL);",
        )
        .unwrap();
        let problems = load(vec![shown(&trades), shown(&keyed)], "trades");
        assert_eq!(
            problems,
            [format!(
                "reference[0].key: table portfolio of {}: the file's keys go into column symbol: \
                 declare it first, VARCHAR NOT NULL",
                keyed.display()
            )]
        );
    }

    #[test]
    fn overrides_set_keys_of_the_file_and_name_the_bad_ones() {
        let file = repo_root().join("pipelines/ingest-gateio.toml");
        let c = Config::load_with(
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
        assert_eq!(c.engine.checkpoint_dir, Some(PathBuf::from("/tmp/cp")));

        let err = Config::load_with(
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
            err.contains("sink.topic.name: cannot override: sink.topic is a string, not a table"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_key_and_a_wrong_duration_name_their_key_and_what_is_expected() {
        let file = repo_root().join("pipelines/kafka-cassandra.toml");
        let dead_letter: toml::Table = toml::from_str("type = \"kafka\"").unwrap();
        let err = Config::load_with(
            &file,
            &[
                Override::new("dead_letter", dead_letter),
                Override::new("source.session_timeout_ms", -1),
            ],
        )
        .unwrap_err();
        let problems: Vec<String> = err.problems.iter().map(Problem::to_string).collect();
        assert_eq!(
            problems,
            [
                "source.session_timeout_ms: invalid value: integer `-1`, expected a duration: a \
                 whole number of milliseconds or text such as \"500ms\" or \"5s\"",
                "dead_letter.topic: is missing",
            ]
        );
    }

    #[test]
    fn a_problem_with_a_key_an_override_set_names_the_override_not_the_file() {
        // The shipped file (paths made absolute) with one mistake of its own.
        let dir = tempfile::tempdir().unwrap();
        let mut table = shipped_table();
        let file = dir.path().join("pipeline.toml");
        table["engine"]
            .as_table_mut()
            .unwrap()
            .insert("target_partitions".into(), 0.into());
        std::fs::write(&file, toml::to_string(&table).unwrap()).unwrap();
        let dead_letter: toml::Table = toml::from_str("type = \"kafka\"").unwrap();
        let err = Config::load_with(
            &file,
            &[
                Override::new("engine.max_records_per_batch", 0),
                Override::new("dead_letter", dead_letter),
            ],
        )
        .unwrap_err();
        let shown = file.display();
        assert_eq!(
            err.to_string().lines().collect::<Vec<_>>(),
            [
                format!(
                    "{shown}: engine.max_records_per_batch (from --set \
                     engine.max_records_per_batch=0): must be at least 1"
                ),
                format!(
                    "{shown}: dead_letter.topic (from --set dead_letter={{ type = \"kafka\" }}): is missing"
                ),
            ]
        );
        let err = Config::load_with(&file, &[Override::new("engine.trigger", "available-now")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{shown}: engine.target_partitions: must be at least 1"),
            "the file's own value is the file's problem"
        );
    }
}
