//! Config plumbing every section shares: [`Problem`]s named by their key path, sections read with
//! the key path of serde's errors, durations as integers or humantime text, counts that must be at
//! least 1, paths relative to the config file, and the environment fallbacks.
//!
//! A config file is read once, section by section, by the loader (`coinstream::config`); each
//! connector's `check` adds the problems serde cannot see. Keys in a connector's problems are
//! relative to its section (`ttl_secs`); the loader puts the section in front (`sink.ttl_secs`).

use std::cell::RefCell;
use std::fmt;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

/// The env var the Kafka brokers default to (`host:port,…`).
pub const KAFKA_BOOTSTRAP_ENV: &str = "KAFKA_BOOTSTRAP";
/// The Kafka brokers when neither the config nor [`KAFKA_BOOTSTRAP_ENV`] names any.
pub const DEFAULT_KAFKA_BOOTSTRAP: &str = "127.0.0.1:9092";
/// The env var the Cassandra contact points default to (comma-separated `host:port`).
pub const CASSANDRA_NODES_ENV: &str = "CASSANDRA_NODES";
/// The Cassandra contact point when neither the config nor [`CASSANDRA_NODES_ENV`] names one.
pub const DEFAULT_CASSANDRA_NODE: &str = "127.0.0.1:9042";

/// The Kafka brokers to use when the config names none: env `KAFKA_BOOTSTRAP`, else
/// [`DEFAULT_KAFKA_BOOTSTRAP`].
pub fn kafka_bootstrap() -> String {
    std::env::var(KAFKA_BOOTSTRAP_ENV).unwrap_or_else(|_| DEFAULT_KAFKA_BOOTSTRAP.into())
}

/// The Cassandra contact points to use when the config names none: the comma-separated list in
/// env `CASSANDRA_NODES`, else [`DEFAULT_CASSANDRA_NODE`].
pub fn cassandra_nodes() -> Vec<String> {
    nodes_from(std::env::var(CASSANDRA_NODES_ENV).ok().as_deref())
}

/// `CASSANDRA_NODES`'s value as a list (empty entries dropped), or the default node.
pub fn nodes_from(env: Option<&str>) -> Vec<String> {
    let nodes: Vec<String> = env
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        vec![DEFAULT_CASSANDRA_NODE.to_owned()]
    } else {
        nodes
    }
}

/// One thing wrong with a config: the key path it is about (`ttl_secs`, `sink.ttl_secs`,
/// `reference[0].columns`; empty for the whole file or section) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, relative to whatever section the producer was given.
    pub key: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same problem with `prefix` (a section, e.g. `sink`) in front of its key.
    pub fn under(self, prefix: &str) -> Self {
        Self {
            key: join_key(prefix, &self.key),
            message: self.message,
        }
    }

    /// Several problems of the section `section` as one [`engine::Error::Config`], for callers
    /// that build a connector without the loader (the `ingest` flags, tests).
    pub fn into_error(section: &str, problems: Vec<Problem>) -> engine::Error {
        let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
        engine::Error::config(section, lines.join("; "))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// A problem at `key` unless `path` is a file this process can open for reading, so a missing
/// input file is reported at load with every other problem rather than when it is first read:
/// `cannot read /x/nope.sql: No such file or directory` (the OS's reason), or that it is a folder.
pub fn readable_file(key: &str, path: &Path) -> Option<Problem> {
    let cannot =
        |reason: String| Problem::new(key, format!("cannot read {}: {reason}", path.display()));
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_dir() => Some(cannot("it is a folder, not a file".into())),
        Ok(_) => None,
        Err(e) => Some(cannot(os_reason(&e))),
    }
}

/// An IO error's message without std's ` (os error N)` suffix, which says nothing more to a user.
fn os_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_owned(),
        _ => text,
    }
}

/// A problem at `max_key` when a backoff's longest pause (`max`) is below its first pause
/// (`initial`, set by `initial_key`), in whatever unit the two keys share.
pub fn backoff_order<T: PartialOrd + fmt::Debug>(
    (initial_key, initial): (&str, T),
    (max_key, max): (&str, T),
) -> Option<Problem> {
    (max < initial).then(|| {
        Problem::new(
            max_key,
            format!("{max:?} is below {initial_key} ({initial:?})"),
        )
    })
}

/// `prefix.key`, where either may be empty; an index (`[0]`) needs no dot.
pub fn join_key(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (_, true) => prefix.to_owned(),
        _ if key.starts_with('[') => format!("{prefix}{key}"),
        _ => format!("{prefix}.{key}"),
    }
}

/// One key as it is written in TOML: bare when it can be (`ttl_secs`), else quoted with TOML's
/// escapes (`""`, `"a.b"`), so a key path shows exactly which key is meant.
pub fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        toml::Value::String(key.to_owned()).to_string()
    }
}

/// Reads `value` (the section `section` of a config file) as a `T`. An error names the key path
/// where serde stopped (`sink.ttl_secs: must be at least 1`); serde stops at the first error, so a
/// section reports at most one type error.
pub fn from_toml<T: DeserializeOwned>(section: &str, value: toml::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = key_path(e.path().iter());
        Problem::new(join_key(section, &key), message_of(e.into_inner()))
    })
}

/// Reads a section tagged by its `type` key (`[source] type = "kafka"`) as the enum `T`, whose
/// variants are externally tagged (serde's default): the tag becomes the variant, so error key
/// paths reach inside the variant (`sink.ttl_secs`) — serde's internally tagged enums buffer the
/// section and lose them.
pub fn from_tagged_toml<T: DeserializeOwned>(
    section: &str,
    value: toml::Value,
) -> Result<T, Problem> {
    let toml::Value::Table(mut table) = value else {
        return Err(Problem::new(section, "must be a table"));
    };
    let kind = match table.remove("type") {
        Some(toml::Value::String(kind)) => kind,
        Some(other) => {
            return Err(Problem::new(
                join_key(section, "type"),
                format!("must be a string, not {}", other.type_str()),
            ));
        }
        None => return Err(Problem::new(join_key(section, "type"), "is missing")),
    };
    let tagged = toml::Table::from_iter([(kind, toml::Value::Table(table))]);
    serde_path_to_error::deserialize(toml::Value::Table(tagged)).map_err(|e| {
        let segments: Vec<_> = e.path().iter().cloned().collect();
        let key = match segments.split_first() {
            // The variant's own name is the `type` key's value, not a key.
            Some((_, rest)) if !rest.is_empty() => key_path(rest.iter()),
            _ => "type".to_owned(),
        };
        Problem::new(join_key(section, &key), message_of(e.into_inner()))
    })
}

fn key_path<'a>(segments: impl Iterator<Item = &'a serde_path_to_error::Segment>) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(&toml_key(k));
            }
            Segment::Unknown => {}
        }
    }
    key
}

/// serde's message without toml's trailing newline.
fn message_of(e: toml::de::Error) -> String {
    e.message().trim().to_owned()
}

thread_local! {
    /// The folder of the config file being read; see [`with_base_dir`].
    static BASE_DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Runs `read` with relative paths resolved against `base` (the config file's folder). serde's
/// derive cannot hand context to a field's deserializer, so the folder is scoped to this thread for
/// the duration of `read`; outside it paths stay as written (relative to the working directory).
pub fn with_base_dir<R>(base: &Path, read: impl FnOnce() -> R) -> R {
    struct Restore(Option<PathBuf>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BASE_DIR.with(|b| *b.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(BASE_DIR.with(|b| b.borrow_mut().replace(base.to_owned())));
    read()
}

fn resolve(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        return path;
    }
    BASE_DIR.with(|b| match &*b.borrow() {
        Some(base) => base.join(&path),
        None => path,
    })
}

/// A path field, relative to the config file's folder (see [`with_base_dir`]).
pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    PathBuf::deserialize(d).map(resolve)
}

/// An optional path field, relative to the config file's folder; use with `#[serde(default)]`.
pub fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    PathBuf::deserialize(d).map(|p| Some(resolve(p)))
}

/// A list of paths, each relative to the config file's folder.
pub fn paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Vec::<PathBuf>::deserialize(d).map(|v| v.into_iter().map(resolve).collect())
}

/// A count that must be at least 1 (`NonZeroU32`, `NonZeroUsize`, …).
pub fn at_least_one<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<NonZeroU64>,
{
    let n = u64::deserialize(d)?;
    let n = NonZeroU64::new(n).ok_or_else(|| D::Error::custom("must be at least 1"))?;
    T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))
}

/// A duration as an integer of `unit`s or humantime text (`"500ms"`, `"10s"`, `"1m 30s"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Count(u64),
    Text(String),
}

fn duration<'de, D: Deserializer<'de>>(d: D, unit: Duration) -> Result<Duration, D::Error> {
    match DurationValue::deserialize(d)? {
        DurationValue::Count(n) => u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(|| D::Error::custom(format!("{n} is too large"))),
        DurationValue::Text(text) => humantime::parse_duration(&text).map_err(|e| {
            D::Error::custom(format!(
                "{text:?} is not a duration such as \"500ms\" or \"10s\": {e}"
            ))
        }),
    }
}

/// A `_ms` key: milliseconds as an integer, or humantime text (`"500ms"`, `"10s"`).
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration(d, Duration::from_millis(1))
}

/// A `_ms` key that must be above zero.
pub fn positive_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive(millis(d)?)
}

/// A `_secs` key: seconds as an integer, or humantime text (`"1h"`, `"30d"`).
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration(d, Duration::from_secs(1))
}

fn positive<E: serde::de::Error>(d: Duration) -> Result<Duration, E> {
    if d.is_zero() {
        Err(E::custom("must be at least 1"))
    } else {
        Ok(d)
    }
}

/// An optional `_secs` key that must be above zero; use with `#[serde(default)]`.
pub fn optional_positive_secs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    secs(d).and_then(positive).map(Some)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read only by serde and Debug
    struct Section {
        #[serde(deserialize_with = "positive_millis")]
        timeout_ms: Duration,
        #[serde(deserialize_with = "at_least_one")]
        attempts: NonZeroU32,
        #[serde(default, deserialize_with = "optional_path")]
        file: Option<PathBuf>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)] // read only by serde and Debug
    enum Tagged {
        One(Section),
        Other {},
    }

    fn value(text: &str) -> toml::Value {
        toml::Value::Table(toml::from_str(text).unwrap())
    }

    #[test]
    fn durations_are_integers_of_the_unit_or_humantime_text() {
        let read = |text: &str| from_toml::<Section>("s", value(text));
        let s = read("timeout_ms = 250\nattempts = 1").unwrap();
        assert_eq!(s.timeout_ms, Duration::from_millis(250));
        let s = read("timeout_ms = \"1m 30s\"\nattempts = 1").unwrap();
        assert_eq!(s.timeout_ms, Duration::from_secs(90));
        assert_eq!(
            read("timeout_ms = 0\nattempts = 1")
                .unwrap_err()
                .to_string(),
            "s.timeout_ms: must be at least 1"
        );
        let err = read("timeout_ms = \"soon\"\nattempts = 1").unwrap_err();
        assert_eq!(err.key, "s.timeout_ms");
        assert!(err.message.contains("not a duration"), "{err}");
    }

    #[test]
    fn errors_name_the_key_path_inside_a_tagged_section() {
        let read = |text: &str| from_tagged_toml::<Tagged>("sink", value(text));
        assert!(matches!(
            read("type = \"one\"\ntimeout_ms = 1\nattempts = 2").unwrap(),
            Tagged::One(_)
        ));
        assert!(matches!(
            read("type = \"other\"").unwrap(),
            Tagged::Other {}
        ));
        assert_eq!(
            read("type = \"one\"\ntimeout_ms = 1\nattempts = 0")
                .unwrap_err()
                .to_string(),
            "sink.attempts: must be at least 1"
        );
        let err = read("type = \"two\"").unwrap_err();
        assert_eq!(err.key, "sink.type");
        assert!(err.message.contains("unknown variant `two`"), "{err}");
        assert_eq!(
            read("x = 1").unwrap_err().to_string(),
            "sink.type: is missing"
        );
        let err = read("type = \"one\"\ntimeout_ms = 1\nattempts = 1\nfiel = 2").unwrap_err();
        assert!(err.message.contains("unknown field `fiel`"), "{err}");
    }

    #[test]
    fn relative_paths_resolve_against_the_base_dir_only_while_reading() {
        let read =
            || from_toml::<Section>("", value("timeout_ms = 1\nattempts = 1\nfile = \"a/b\""));
        let inside = with_base_dir(Path::new("/etc/coinstream"), read).unwrap();
        assert_eq!(inside.file.unwrap(), Path::new("/etc/coinstream/a/b"));
        assert_eq!(read().unwrap().file.unwrap(), Path::new("a/b"));
        let absolute = with_base_dir(Path::new("/x"), || {
            from_toml::<Section>("", value("timeout_ms = 1\nattempts = 1\nfile = \"/a\""))
        });
        assert_eq!(absolute.unwrap().file.unwrap(), Path::new("/a"));
    }

    #[test]
    fn cassandra_nodes_come_from_a_comma_separated_list() {
        assert_eq!(nodes_from(None), vec![DEFAULT_CASSANDRA_NODE]);
        assert_eq!(
            nodes_from(Some(" 10.0.0.1:9042, 10.0.0.2:9042 ,")),
            vec!["10.0.0.1:9042", "10.0.0.2:9042"]
        );
    }
}
