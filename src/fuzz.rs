//! Fuzz target `config` (see the `coinstream-fuzz` crate and `fuzz/README.md`): the config loader
//! ([`Config::parse`], what `Config::load` runs on a file's text) on hostile variants of the
//! shipped configs.
//!
//! Properties: it never panics; a refused config says which file, and every problem names its
//! key (`engine.trigger: …`) or, for a TOML error, the line and column it is at; an accepted
//! config keeps the invariants the rest of the binary relies on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use fuzz::Harness;

use coinstream::config::{Config, SECTIONS};

const WORDS: &[&str] = &[
    "engine",
    "trigger",
    "max_records_per_batch",
    "checkpoint_dir",
    "target_partitions",
    "tables",
    "input",
    "columns",
    "reference",
    "transforms",
    "files",
    "output",
    "source",
    "sink",
    "dead_letter",
    "state",
    "report",
    "watermark",
    "delay",
    "output_mode",
    r#""append""#,
    r#""update""#,
    r#""10s""#,
    r#""available-now""#,
    r#""interval:0ms""#,
    r#""interval:1m""#,
    r#""decimal(38,20)""#,
    r#""decimal(39,2)""#,
    r#""price decimal(28,10) not null""#,
    r#""at timestamp(ns)""#,
    r#""../sql/tables/trades.sql""#,
    r#""../sql/tables/reference.sql""#,
    r#""portfolio""#,
    r#""replay""#,
    r#""coinbase_capture""#,
    r#""generate""#,
    r#""kafka""#,
    r#""coinbase""#,
    r#""parquet""#,
    r#""cassandra""#,
    r#""stdout""#,
    r#""null""#,
    r#""file""#,
    "[[reference]]",
    "[engine]",
    "[source]",
    "= 1",
    "= -1",
    "= 0",
    "= 1e400",
    "= nan",
    "= inf",
    "= 18446744073709551616",
    "= 2024-01-01T00:00:00Z",
    "= []",
    "= {}",
    "\"\"\"",
    "'''",
    "#",
    "\r\n",
];

/// Whether a problem names a key: a dotted path under one of the config's sections (indices
/// allowed), an unknown section, or, for TOML syntax errors, the line and column.
fn names_a_key(key: &str, message: &str) -> bool {
    if key.is_empty() {
        return message.starts_with("TOML parse error at line ") && message.contains(", column ");
    }
    message.starts_with("unknown section")
        || SECTIONS.iter().any(|top| {
            key.strip_prefix(top)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
}

/// Where the fuzzed text is said to come from (it is never written).
fn fuzzed_file() -> PathBuf {
    fuzz::repo_root().join("pipelines/fuzzed.toml")
}

fn check(text: &[u8], accepted: &AtomicU64) {
    // The loader reads text: bytes that are not UTF-8 are refused before it.
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    // Parsed as a file of pipelines/: the connectors read the files a config names at load, and
    // the shipped configs' relative paths then reach the repository's real ones.
    let file = fuzzed_file();
    match Config::parse(&file, text) {
        Ok(config) => {
            accepted.fetch_add(1, Ordering::Relaxed);
            let stems: Vec<_> = config
                .transforms
                .files
                .iter()
                .filter_map(|p| p.file_stem()?.to_str())
                .collect();
            assert!(
                stems.contains(&config.transforms.output.as_str()),
                "{stems:?}"
            );
            assert!(!config.transforms.files.is_empty());
            assert!(config.context.target_partitions >= 1);
            if let engine::trigger::Trigger::ProcessingTime(interval) = config.engine.trigger {
                assert!(
                    interval <= engine::trigger::MAX_INTERVAL,
                    "the runtime can add {interval:?} to the clock"
                );
            }
            assert!(!config.input_schema.fields().is_empty());
            for path in &config.transforms.files {
                assert!(path.is_absolute(), "{} is rebased", path.display());
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "a refusal says why");
            assert!(
                e.to_string().contains(&file.display().to_string()),
                "names the file"
            );
            for problem in &e.problems {
                assert!(
                    names_a_key(&problem.key, &problem.message),
                    "names no key: {problem}"
                );
            }
        }
    }
}

/// The shipped configs, the seeds the mutations start from.
const SHIPPED: &[&str] = &[
    "coinstream.toml",
    "pipelines/kafka-cassandra.toml",
    "pipelines/kafka-cassandra-legacy.toml",
    "pipelines/candles-cassandra.toml",
    "pipelines/coinbase-embedded.toml",
    "pipelines/ingest-coinbase.toml",
    "pipelines/ingest-gateio.toml",
];

#[test]
fn config() {
    let accepted = AtomicU64::new(0);
    let harness = Harness::new("config", WORDS).with_repo_files(SHIPPED);
    // The shipped configs load from where they are, each with its own relative paths.
    for shipped in SHIPPED {
        let path = fuzz::repo_root().join(shipped);
        if let Err(e) = Config::load(&path) {
            panic!("the shipped {shipped} is refused: {e}");
        }
    }
    harness.replay_seeds(|text| check(text, &accepted));
    // Those of pipelines/ are also accepted as the fuzzed file (the mutations start from them).
    assert!(
        accepted.load(Ordering::Relaxed) >= 4,
        "the shipped pipelines are accepted as pipelines/fuzzed.toml"
    );
    fuzz::mutate_for_budget!(&harness, |input: &[u8]| check(input, &accepted));
    harness.report(&format!("{} accepted", accepted.load(Ordering::Relaxed)));
}
