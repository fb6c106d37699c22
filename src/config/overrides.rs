//! Overrides of a config file's keys: `sink.keyspace = "ks"` applied to the parsed TOML before
//! it is read, so flags and tests change the shipped files without editing their text.

use std::fmt;
use std::str::FromStr;

use connectors::common::config::Problem;

/// One key of the config file set to a TOML value, e.g. `("source.topics", ["t1"])`. The key is a
/// dotted path of tables (`sink.replication.replication_factor`); missing tables are created, and
/// a value replaces what the file had (a whole table for `sink`). Relative paths in the value are
/// relative to the config file's folder, as in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The dotted key path.
    pub key: String,
    /// The value it gets.
    pub value: toml::Value,
}

impl Override {
    /// `key` set to `value` (`"ks"`, `42`, `true`, a `Vec`, a [`toml::Table`], …).
    pub fn new(key: impl Into<String>, value: impl Into<toml::Value>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
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

/// Sets every override in `table` (the whole file), in order; a key whose parent is not a table
/// is a problem.
pub fn apply(table: &mut toml::Table, overrides: &[Override]) -> Vec<Problem> {
    overrides
        .iter()
        .filter_map(|o| {
            let parts: Vec<&str> = o.key.split('.').collect();
            set(table, &parts, o.value.clone()).err().map(|walked| {
                Problem::new(
                    o.key.clone(),
                    format!("cannot override: {walked}, not a table"),
                )
            })
        })
        .collect()
}

/// Sets `path` (at least one key) in `table`, creating missing tables; on a value that is not a
/// table, says which (`engine.trigger is a string`).
fn set(table: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Ok(()),
        [last] => {
            table.insert((*last).to_owned(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let next = table
                .entry(*first)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match next {
                toml::Value::Table(t) => {
                    set(t, rest, value).map_err(|walked| format!("{first}.{walked}"))
                }
                other => Err(format!("{first} is a {}", other.type_str())),
            }
        }
    }
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
}
