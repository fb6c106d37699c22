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

    /// `Ok` when `problems` is empty, else [`Problem::into_error`]: what a section's `validate`
    /// makes of its `check`.
    pub fn into_result(section: &str, problems: Vec<Problem>) -> engine::Result<()> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Self::into_error(section, problems))
        }
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

/// A problem at `partition_by` (relative to the section) when it names columns that the
/// transform's output `schema` lacks, so a run stops before reading instead of at its first
/// write.
pub fn partition_columns_problem(
    partition_by: &[String],
    schema: &arrow::datatypes::SchemaRef,
) -> Option<Problem> {
    let missing: Vec<String> = partition_by
        .iter()
        .filter(|name| schema.field_with_name(name).is_err())
        .map(|name| format!("{name:?}"))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let valid: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{:?}", f.name()))
        .collect();
    Some(Problem::new(
        "partition_by",
        format!(
            "{} not in the transform's output; valid columns are {}",
            match missing.as_slice() {
                [one] => format!("column {one} is"),
                many => format!("columns {} are", many.join(", ")),
            },
            valid.join(", ")
        ),
    ))
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
        problem_at(section, &key, e.into_inner())
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
        let error = e.into_inner();
        let key = match segments.split_first() {
            // The variant's own name is the `type` key's value, not a key.
            Some((_, rest)) if !rest.is_empty() => key_path(rest.iter()),
            // A field missing from the variant's table: serde stops at the table, which is the
            // section itself, so the key is the field's alone (made by `problem_at`).
            Some(_) if missing_field(&error).is_some() => String::new(),
            _ => "type".to_owned(),
        };
        problem_at(section, &key, error)
    })
}

/// The problem serde's `error` makes at `key` (relative to `section`). serde reports a missing
/// field at the table that lacks it, with the field's name only in its message ("missing field
/// `topic`"), so that problem is moved to the field's own key: `dead_letter.topic: is missing`.
fn problem_at(section: &str, key: &str, error: toml::de::Error) -> Problem {
    match missing_field(&error) {
        Some(field) => Problem::new(
            join_key(section, &join_key(key, &toml_key(field))),
            "is missing",
        ),
        None => Problem::new(join_key(section, key), message_of(error)),
    }
}

/// The field serde's "missing field `name`" error names, if `error` is that error.
fn missing_field(error: &toml::de::Error) -> Option<&str> {
    error
        .message()
        .trim()
        .strip_prefix("missing field `")?
        .strip_suffix('`')
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

/// A duration as a whole number of `unit`s or humantime text (`"500ms"`, `"10s"`, `"1m 30s"`).
/// Anything else (a negative number, a float, a table) is reported as what it is plus what a
/// duration is: `invalid value: integer \`-1\`, expected a duration: a whole number of
/// milliseconds or text such as "500ms" or "5s"`.
struct DurationVisitor {
    unit: Duration,
    /// The unit's name in messages, plural (`milliseconds`).
    unit_name: &'static str,
    /// Two examples of the text form, for messages (`"500ms" or "5s"`).
    examples: &'static str,
}

impl DurationVisitor {
    fn count<E: serde::de::Error>(&self, n: u64) -> Result<Duration, E> {
        u32::try_from(n)
            .ok()
            .and_then(|n| self.unit.checked_mul(n))
            .ok_or_else(|| E::custom(format!("{n} is too large")))
    }
}

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a duration: a whole number of {} or text such as {}",
            self.unit_name, self.examples
        )
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
        self.count(n)
    }

    // TOML integers are signed, so every integer arrives here.
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
        match u64::try_from(n) {
            Ok(n) => self.count(n),
            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(n), &self)),
        }
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|e| {
            E::custom(format!(
                "{text:?} is not a duration such as {}: {e}",
                self.examples
            ))
        })
    }
}

/// A `_ms` key: milliseconds as an integer, or humantime text (`"500ms"`, `"10s"`).
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor {
        unit: Duration::from_millis(1),
        unit_name: "milliseconds",
        examples: "\"500ms\" or \"5s\"",
    })
}

/// A `_ms` key that must be above zero.
pub fn positive_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive(millis(d)?)
}

/// A `_secs` key: seconds as an integer, or humantime text (`"1h"`, `"30d"`).
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor {
        unit: Duration::from_secs(1),
        unit_name: "seconds",
        examples: "\"30s\" or \"1h\"",
    })
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

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)] // read only by serde and Debug
    enum TaggedOuter {
        Outer { inner: Section },
    }

    fn value(text: &str) -> toml::Value {
        toml::Value::Table(toml::from_str(text).unwrap())
    }

    /// Asserts that `read` rejects each `(input, key, message)`'s input with exactly that problem.
    fn assert_problems<T: fmt::Debug>(
        read: impl Fn(&str) -> Result<T, Problem>,
        cases: &[(&str, &str, &str)],
    ) {
        for &(input, key, message) in cases {
            assert_eq!(
                read(input).unwrap_err(),
                Problem::new(key, message),
                "{input:?}"
            );
        }
    }

    #[test]
    fn durations_are_integers_of_the_unit_or_humantime_text() {
        let read = |text: &str| from_toml::<Section>("s", value(text));
        let s = read("timeout_ms = 250\nattempts = 1").unwrap();
        assert_eq!(s.timeout_ms, Duration::from_millis(250));
        let s = read("timeout_ms = \"1m 30s\"\nattempts = 1").unwrap();
        assert_eq!(s.timeout_ms, Duration::from_secs(90));
        assert_problems(
            read,
            &[
                (
                    "timeout_ms = 0\nattempts = 1",
                    "s.timeout_ms",
                    "must be at least 1",
                ),
                (
                    "timeout_ms = \"soon\"\nattempts = 1",
                    "s.timeout_ms",
                    "\"soon\" is not a duration such as \"500ms\" or \"5s\": expected number at 0",
                ),
            ],
        );
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
        assert_problems(
            read,
            &[
                (
                    "type = \"one\"\ntimeout_ms = 1\nattempts = 0",
                    "sink.attempts",
                    "must be at least 1",
                ),
                (
                    "type = \"two\"",
                    "sink.type",
                    "unknown variant `two`, expected `one` or `other`",
                ),
                ("x = 1", "sink.type", "is missing"),
                (
                    "type = \"one\"\ntimeout_ms = 1\nattempts = 1\nfiel = 2",
                    "sink.fiel",
                    "unknown field `fiel`, expected one of `timeout_ms`, `attempts`, `file`",
                ),
            ],
        );
    }

    #[test]
    fn a_missing_field_is_reported_at_its_own_key() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)] // read only by serde and Debug
        struct Outer {
            inner: Section,
        }
        let tagged =
            from_tagged_toml::<Tagged>("dead_letter", value("type = \"one\"\nattempts = 1"));
        assert_eq!(
            tagged.unwrap_err().to_string(),
            "dead_letter.timeout_ms: is missing"
        );
        let plain = from_toml::<Section>("source", value("attempts = 1"));
        assert_eq!(
            plain.unwrap_err().to_string(),
            "source.timeout_ms: is missing"
        );
        let nested = from_toml::<Outer>("s", value("[inner]\ntimeout_ms = 1"));
        assert_eq!(
            nested.unwrap_err().to_string(),
            "s.inner.attempts: is missing"
        );
        let nested = from_tagged_toml::<TaggedOuter>(
            "sink",
            value("type = \"outer\"\n[inner]\nattempts = 1"),
        );
        assert_eq!(
            nested.unwrap_err().to_string(),
            "sink.inner.timeout_ms: is missing"
        );
    }

    #[test]
    fn a_duration_of_the_wrong_kind_says_what_a_duration_is() {
        let read = |timeout: &str| {
            from_toml::<Section>(
                "source",
                value(&format!("timeout_ms = {timeout}\nattempts = 1")),
            )
            .unwrap_err()
            .to_string()
        };
        let expected = "expected a duration: a whole number of milliseconds or text such as \
                        \"500ms\" or \"5s\"";
        for (given, what) in [
            ("-1", "invalid value: integer `-1`"),
            ("1.5", "invalid type: floating point `1.5`"),
            ("true", "invalid type: boolean `true`"),
            ("[1]", "invalid type: sequence"),
        ] {
            assert_eq!(
                read(given),
                format!("source.timeout_ms: {what}, {expected}")
            );
        }
        assert_eq!(
            read("4294967296"),
            "source.timeout_ms: 4294967296 is too large"
        );

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)] // read only by serde and Debug
        struct Ttl {
            #[serde(deserialize_with = "secs")]
            ttl_secs: Duration,
        }
        let ttl = from_toml::<Ttl>("sink", value("ttl_secs = -5")).unwrap_err();
        assert_eq!(
            ttl.to_string(),
            "sink.ttl_secs: invalid value: integer `-5`, expected a duration: a whole number of \
             seconds or text such as \"30s\" or \"1h\""
        );
        let ttl = from_toml::<Ttl>("sink", value("ttl_secs = \"2h\"")).unwrap();
        assert_eq!(ttl.ttl_secs, Duration::from_secs(7200));
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
