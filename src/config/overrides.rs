//! Overrides of a config file's keys: `sink.keyspace = "ks"` applied to the parsed TOML before
//! it is read, so flags and tests change the shipped files without editing their text.

use std::fmt;
use std::str::FromStr;

use connectors::common::config::Problem;

/// One key of the config file set to a TOML value, e.g. `("source.topics", ["t1"])`. The key is a
/// dotted path of tables (`sink.replication.replication_factor`); missing tables are created, and
/// a value replaces what the file had whole (`sink` set to a table drops every key of the file's
/// `[sink]`). A part that is a number picks an entry of an array, counted from 0
/// (`reference.0.path` is the first `[[reference]]`'s path); arrays are not grown. Relative paths
/// in the value are relative to the config file's folder, as in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The dotted key path.
    pub key: String,
    /// The value it gets.
    pub value: toml::Value,
    /// The command-line flag that set it (`--topic`), when that is not `--set key=value`; see
    /// [`Override::from_flag`].
    flag: Option<String>,
}

impl Override {
    /// `key` set to `value` (`"ks"`, `42`, `true`, a `Vec`, a [`toml::Table`], …).
    pub fn new(key: impl Into<String>, value: impl Into<toml::Value>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            flag: None,
        }
    }

    /// The same override, set by the flag `flag` (`--topic`) rather than by `--set`, so a problem
    /// with its key blames that flag.
    pub fn from_flag(self, flag: impl Into<String>) -> Self {
        Self {
            flag: Some(flag.into()),
            ..self
        }
    }

    /// Where the value came from, for problems: `--set engine.max_records_per_batch=0`, or the
    /// flag of [`Override::from_flag`].
    pub fn origin(&self) -> String {
        match &self.flag {
            Some(flag) => flag.clone(),
            None => format!("--set {self}"),
        }
    }
}

/// The override that set the value a problem at `key` (a key path as [`Problem`]s write it:
/// `reference[0].path`, `engine."max records"`) is about: the last one whose key is `key` or a
/// table holding it (`dead_letter` set whole is behind `dead_letter.topic`). `None` when the value
/// came from the file.
pub fn origin_of<'a>(overrides: &'a [Override], key: &str) -> Option<&'a Override> {
    let segments = key_segments(key);
    overrides.iter().rev().find(|o| {
        let parts: Vec<&str> = o.key.split('.').collect();
        segments.len() >= parts.len() && segments.iter().zip(&parts).all(|(s, p)| s == p)
    })
}

/// A problem's key path split into keys and array indexes, unquoted: `reference[0]."a.b"` is
/// `reference`, `0`, `a.b` (as an override names them: `reference.0.…`).
fn key_segments(key: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' | '[' | ']' => {
                if !current.is_empty() {
                    segments.push(std::mem::take(&mut current));
                }
            }
            // A quoted key (written by `toml_key`, with TOML's escapes): up to the closing quote.
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => current.extend(chars.next()),
                        c => current.push(c),
                    }
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

impl FromStr for Override {
    type Err = String;

    /// `key=value`, where value is TOML (`"ks"`, `["t1", "t2"]`, `{ type = "null" }`, `500`);
    /// a value that is not TOML is taken as a string, so `sink.keyspace=ks` works unquoted.
    fn from_str(text: &str) -> Result<Self, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not key=value"))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(format!("{key:?} is not a dotted key such as sink.keyspace"));
        }
        let value = value.trim();
        let value = match toml::from_str::<toml::Table>(&format!("value = {value}")) {
            Ok(mut table) => table.remove("value").unwrap_or_else(|| value.into()),
            Err(_) => toml::Value::String(value.to_owned()),
        };
        Ok(Self::new(key, value))
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Sets every override in `table` (the whole file), in order; a key whose parent is neither a
/// table nor an array holding that index is a problem.
pub fn apply(table: &mut toml::Table, overrides: &[Override]) -> Vec<Problem> {
    overrides
        .iter()
        .filter_map(|o| {
            let parts: Vec<&str> = o.key.split('.').collect();
            set_in_table(table, &parts, o.value.clone())
                .err()
                .map(|why| Problem::new(o.key.clone(), format!("cannot override: {why}")))
        })
        .collect()
}

/// Sets `path` (at least one key) in `table` (the whole file), creating missing tables on the
/// way; a value already there is replaced whole, a table too.
fn set_in_table(table: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(());
    };
    let mut node = table.entry(*first).or_insert_with(empty_table);
    let mut walked = (*first).to_owned();
    for key in rest {
        node = child(node, &walked, key)?;
        walked = format!("{walked}.{key}");
    }
    *node = value;
    Ok(())
}

/// The value at `key` under `node`, the value at `walked`: a table's key (an empty table when
/// missing), or an array's entry by its index from 0 (`reference.0.path`, as the file's first
/// `[[reference]]`). An array is not grown: an index past its end is an error, as is a key under
/// a string or number (`engine.trigger is a string, not a table`).
fn child<'a>(
    node: &'a mut toml::Value,
    walked: &str,
    key: &str,
) -> Result<&'a mut toml::Value, String> {
    match node {
        toml::Value::Table(table) => Ok(table.entry(key).or_insert_with(empty_table)),
        toml::Value::Array(items) => {
            let len = items.len();
            key.parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or_else(|| match len.checked_sub(1) {
                    None => format!("{walked} is an empty array, it has no entry {key}"),
                    Some(last) => {
                        format!("{walked} is an array whose entries are 0 to {last}, not {key}")
                    }
                })
        }
        other => Err(format!("{walked} is a {}, not a table", other.type_str())),
    }
}

fn empty_table() -> toml::Value {
    toml::Value::Table(toml::Table::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_values_and_bare_strings() {
        let o: Override = "source.topics=[\"a\", \"b\"]".parse().unwrap();
        assert_eq!(o, Override::new("source.topics", vec!["a", "b"]));
        let o: Override = "sink.keyspace=ks_1".parse().unwrap();
        assert_eq!(o.value, toml::Value::from("ks_1"));
        let o: Override = "engine.max_records_per_batch = 7".parse().unwrap();
        assert_eq!(o.value, toml::Value::from(7));
        let o: Override = "sink={ type = \"null\" }".parse().unwrap();
        assert!(
            o.value
                .as_table()
                .is_some_and(|t| t["type"].as_str() == Some("null"))
        );
        assert!("nokey".parse::<Override>().is_err());
        assert!("a..b=1".parse::<Override>().is_err());
    }

    #[test]
    fn sets_nested_keys_and_reports_non_tables() {
        let mut table: toml::Table = toml::from_str(
            "[sink]\ntype = \"cassandra\"\nkeyspace = \"a\"\n[engine]\ntrigger = \"available-now\"",
        )
        .unwrap();
        let problems = apply(
            &mut table,
            &[
                Override::new("sink.keyspace", "b"),
                Override::new("sink.replication.replication_factor", 3),
                Override::new("engine.trigger.x", 1),
            ],
        );
        assert_eq!(table["sink"]["keyspace"].as_str(), Some("b"));
        assert_eq!(
            table["sink"]["replication"]["replication_factor"].as_integer(),
            Some(3)
        );
        assert_eq!(
            problems,
            [Problem::new(
                "engine.trigger.x",
                "cannot override: engine.trigger is a string, not a table"
            )]
        );
    }

    #[test]
    fn a_table_value_replaces_the_whole_section() {
        let mut table: toml::Table =
            toml::from_str("[sink]\ntype = \"cassandra\"\nkeyspace = \"a\"\ntable = \"t\"")
                .unwrap();
        let sink: Override =
            "sink={ type = \"parquet\", path = \"/x\", partition_by = [\"symbol\"] }"
                .parse()
                .unwrap();
        assert!(apply(&mut table, &[sink]).is_empty());
        let expected: toml::Table =
            toml::from_str("type = \"parquet\"\npath = \"/x\"\npartition_by = [\"symbol\"]")
                .unwrap();
        assert_eq!(
            table["sink"].as_table(),
            Some(&expected),
            "no key of the old sink is left"
        );
    }

    #[test]
    fn indexes_pick_entries_of_arrays_and_name_the_valid_ones() {
        let mut table: toml::Table = toml::from_str(
            "empty = []\n[transforms]\nfiles = [\"a.sql\"]\n\
             [[reference]]\nname = \"portfolio\"\npath = \"p.json\"\n\
             [[reference]]\nname = \"coins\"\npath = \"c.json\"",
        )
        .unwrap();
        let problems = apply(
            &mut table,
            &[
                Override::new("reference.1.path", "/abs/c.json"),
                Override::new("transforms.files.0", "b.sql"),
                Override::new("reference.2.path", "x"),
                Override::new("reference.first.path", "x"),
                Override::new("empty.0", 1),
                Override::new("reference.0.name.x", 1),
            ],
        );
        assert_eq!(table["reference"][0]["path"].as_str(), Some("p.json"));
        assert_eq!(table["reference"][1]["path"].as_str(), Some("/abs/c.json"));
        assert_eq!(table["reference"][1]["name"].as_str(), Some("coins"));
        assert_eq!(table["transforms"]["files"][0].as_str(), Some("b.sql"));
        assert_eq!(
            table["reference"].as_array().map(Vec::len),
            Some(2),
            "never grown"
        );
        assert_eq!(
            problems,
            [
                Problem::new(
                    "reference.2.path",
                    "cannot override: reference is an array whose entries are 0 to 1, not 2"
                ),
                Problem::new(
                    "reference.first.path",
                    "cannot override: reference is an array whose entries are 0 to 1, not first"
                ),
                Problem::new(
                    "empty.0",
                    "cannot override: empty is an empty array, it has no entry 0"
                ),
                Problem::new(
                    "reference.0.name.x",
                    "cannot override: reference.0.name is a string, not a table"
                ),
            ]
        );
    }

    #[test]
    fn a_problem_key_is_traced_to_the_last_override_that_set_it_or_a_table_holding_it() {
        let overrides = [
            Override::new("engine.max_records_per_batch", 5),
            Override::new("engine.max_records_per_batch", 0),
            Override::new("dead_letter", toml::Table::new()),
            Override::new("reference.1.path", "x"),
            Override::new("sink.topic", "t").from_flag("--topic"),
        ];
        let origin = |key: &str| origin_of(&overrides, key).map(Override::origin);
        assert_eq!(
            origin("engine.max_records_per_batch").as_deref(),
            Some("--set engine.max_records_per_batch=0")
        );
        assert_eq!(
            origin("dead_letter.topic").as_deref(),
            Some("--set dead_letter={}")
        );
        assert_eq!(
            origin("reference[1].path").as_deref(),
            Some("--set reference.1.path=\"x\"")
        );
        assert_eq!(origin("sink.topic").as_deref(), Some("--topic"));
        for from_the_file in [
            "engine",
            "engine.trigger",
            "reference[0].path",
            "sink",
            "sink.topics",
            "",
        ] {
            assert_eq!(origin(from_the_file), None, "{from_the_file}");
        }
        assert_eq!(
            key_segments("a.\"b.c\"[2].\"q\\\"\""),
            ["a", "b.c", "2", "q\""]
        );
    }

    #[test]
    fn an_override_prints_as_the_flag_that_reads_back_the_same() {
        let table: toml::Table = toml::from_str(
            "type = \"generate\"\nportfolio = \"/a b/p.json\"\ncount = 300\nids = [\"x\", \"y\"]",
        )
        .unwrap();
        for o in [
            Override::new("source", table),
            Override::new("engine.checkpoint_dir", "/tmp/a \"quoted\" dir"),
            Override::new("source.topics", vec!["t1", "t2"]),
            Override::new("sink.keyspace", "123"),
        ] {
            assert_eq!(o.to_string().parse::<Override>().as_ref(), Ok(&o), "{o}");
        }
    }
}
