//! `[tables]`, `[input]` and `[[reference]]`: which declared table the input and each reference
//! table is. Tables are declared once, in SQL DDL files (`sql/tables/*.sql`, see
//! `engine::schema`); the sections name them. The column mini-language of `input.columns` and
//! `reference[i].columns` / `reference[i].value` still works as a deprecated alias, with a warning.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use connectors::common::config::Problem;
use engine::reference::ReferenceTable;
use engine::schema::TableDecl;
use serde::Deserialize;

/// Where the built-in trade table comes from, for messages.
const BUILT_IN: &str = "the built-in sql/tables/trades.sql";

/// `[tables]`: the DDL files declaring the input and reference tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TablesSection {
    /// Files of `CREATE TABLE` statements, relative to the config file. Without `[tables]`, the
    /// one table known is the bus trade record (`sql/tables/trades.sql`, built in).
    #[serde(deserialize_with = "connectors::common::config::paths")]
    pub files: Vec<PathBuf>,
}

/// `[[reference]]`: a JSON file keyed by id, loaded once into the declared table `name`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReferenceSection {
    /// The table's name in SQL, and in the DDL files.
    pub name: String,
    /// The JSON file.
    #[serde(deserialize_with = "connectors::common::config::path")]
    pub path: PathBuf,
    /// The column the file's keys go into: the declared table's first column, `VARCHAR NOT NULL`.
    pub key: String,
    /// Deprecated: the value columns in the mini-language, when values are objects.
    pub columns: Option<Vec<String>>,
    /// Deprecated: the one value column in the mini-language, when values are scalars.
    pub value: Option<String>,
}

/// The tables the DDL files declare, each with the file it came from.
pub(super) struct Declared {
    tables: Vec<(TableDecl, String)>,
    /// The files, for messages: `a.sql, b.sql`.
    files: String,
    /// `[tables]` was given (so a deprecated declaration of the same table is a conflict).
    explicit: bool,
    /// Every file was read and parsed. When one was not, a table missing from the rest is not
    /// reported: it may be in that file, whose own problem is the one to fix.
    complete: bool,
}

impl Declared {
    /// Reads and parses every file of `[tables]`, or the built-in trade table without it.
    pub fn read(problems: &mut Vec<Problem>, section: Option<TablesSection>) -> Self {
        let Some(section) = section else {
            let tables =
                engine::schema::parse_ddl(BUILT_IN, connectors::common::trade::TRADE_TABLE_DDL)
                    .expect("the built-in sql/tables/trades.sql parses (a unit test checks it)");
            return Self {
                tables: tables.into_iter().map(|t| (t, BUILT_IN.into())).collect(),
                files: BUILT_IN.into(),
                explicit: false,
                complete: true,
            };
        };
        if section.files.is_empty() {
            problems.push(Problem::new(
                "tables.files",
                "list at least one DDL file of CREATE TABLE statements",
            ));
        }
        let mut tables: Vec<(TableDecl, String)> = Vec::new();
        let mut complete = true;
        for (i, file) in section.files.iter().enumerate() {
            let key = format!("tables.files[{i}]");
            let shown = file.display().to_string();
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) => {
                    problems.push(Problem::new(key, format!("{shown}: cannot read: {e}")));
                    complete = false;
                    continue;
                }
            };
            match engine::schema::parse_ddl(&shown, &text) {
                Ok(declared) => {
                    for table in declared {
                        if let Some((_, other)) = tables.iter().find(|(t, _)| t.name == table.name)
                        {
                            problems.push(Problem::new(
                                &key,
                                format!(
                                    "{shown}: table {} is also declared in {other}",
                                    table.name
                                ),
                            ));
                        } else {
                            tables.push((table, shown.clone()));
                        }
                    }
                }
                Err(e) => {
                    problems.push(Problem::new(key, config_message(e)));
                    complete = false;
                }
            }
        }
        let files: Vec<String> = section
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        Self {
            tables,
            files: files.join(", "),
            explicit: true,
            complete,
        }
    }

    /// The declared table `name` and its file.
    fn find(&self, name: &str) -> Option<&(TableDecl, String)> {
        self.tables.iter().find(|(t, _)| t.name == name)
    }

    /// A problem at `key`: no table `name` in the files (none when a file could not be read or
    /// parsed: that file's problem is already reported).
    fn missing(&self, problems: &mut Vec<Problem>, key: String, name: &str) {
        if !self.complete {
            return;
        }
        let names: Vec<&str> = self.tables.iter().map(|(t, _)| t.name.as_str()).collect();
        problems.push(Problem::new(
            key,
            format!(
                "no table {name:?} in {}; declared there: {}",
                self.files,
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ),
        ));
    }

    /// A problem at `key` if `[tables]` declares `name` too (the deprecated key would win
    /// silently otherwise).
    fn conflict(&self, problems: &mut Vec<Problem>, key: &str, name: &str) {
        if self.explicit
            && let Some((_, file)) = self.find(name)
        {
            problems.push(Problem::new(
                key,
                format!("table {name} is also declared in {file}; remove {key}"),
            ));
        }
    }

    /// The input table's schema: the declared table `table`, or the deprecated `columns`.
    pub fn input(
        &self,
        problems: &mut Vec<Problem>,
        table: &str,
        columns: Option<&[String]>,
    ) -> Option<SchemaRef> {
        if let Some(columns) = columns {
            deprecated("input.columns", &format!("CREATE TABLE {table} (...)"));
            self.conflict(problems, "input.columns", table);
            return legacy_columns(problems, "input.columns", columns);
        }
        match self.find(table) {
            Some((t, _)) => Some(Arc::clone(&t.schema)),
            None => {
                self.missing(problems, "input.table".into(), table);
                None
            }
        }
    }

    /// Reference table `i`: the declared table named `r.name`, or the deprecated
    /// `columns`/`value`.
    pub fn reference(
        &self,
        problems: &mut Vec<Problem>,
        i: usize,
        r: ReferenceSection,
    ) -> Option<ReferenceTable> {
        let at = format!("reference[{i}]");
        let (columns, scalar_values) = match (r.columns, r.value) {
            (None, None) => {
                let Some((table, file)) = self.find(&r.name) else {
                    self.missing(problems, format!("{at}.name"), &r.name);
                    return None;
                };
                return ReferenceTable::declared(r.name, r.path, &r.key, &table.schema)
                    .map_err(|e| {
                        let message = match e {
                            engine::Error::Config { message, .. } => message,
                            other => other.to_string(),
                        };
                        let message = format!("table {} of {file}: {message}", table.name);
                        problems.push(Problem::new(format!("{at}.key"), message));
                    })
                    .ok();
            }
            (Some(c), None) => {
                let key = format!("{at}.columns");
                deprecated(
                    &key,
                    &format!("CREATE TABLE {} ({} VARCHAR NOT NULL, ...)", r.name, r.key),
                );
                self.conflict(problems, &key, &r.name);
                (legacy_columns(problems, &key, &c)?, false)
            }
            (None, Some(v)) => {
                let key = format!("{at}.value");
                deprecated(
                    &key,
                    &format!("CREATE TABLE {} ({} VARCHAR NOT NULL, ...)", r.name, r.key),
                );
                self.conflict(problems, &key, &r.name);
                (legacy_columns(problems, &key, &[v])?, true)
            }
            (Some(_), Some(_)) => {
                problems.push(Problem::new(
                    at,
                    format!(
                        "{:?}: declare exactly one of columns (object values) or value (scalar \
                         values), or neither and the table in [tables]",
                        r.name
                    ),
                ));
                return None;
            }
        };
        Some(ReferenceTable {
            name: r.name,
            path: r.path,
            key_column: r.key,
            columns,
            scalar_values,
        })
    }
}

/// An engine config error's message as a problem's: the key is the problem's, `what` (the file)
/// stays in front of the message.
fn config_message(e: engine::Error) -> String {
    match e {
        engine::Error::Config { what, message } => format!("{what}: {message}"),
        other => other.to_string(),
    }
}

fn deprecated(key: &str, instead: &str) {
    tracing::warn!(
        key,
        "The column mini-language is deprecated: declare the table in a SQL DDL file ({instead}) \
         and list the file in [tables] files."
    );
}

/// Deprecated column declarations as a schema; a problem per bad declaration, keyed `<key>[i]`.
fn legacy_columns(problems: &mut Vec<Problem>, key: &str, decls: &[String]) -> Option<SchemaRef> {
    if decls.is_empty() {
        problems.push(Problem::new(key, "must declare at least one column"));
        return None;
    }
    let before = problems.len();
    let mut fields: Vec<arrow::datatypes::Field> = Vec::with_capacity(decls.len());
    for (i, decl) in decls.iter().enumerate() {
        let at = format!("{key}[{i}]");
        match engine::schema::parse_column(decl) {
            Ok(field) if fields.iter().any(|f| f.name() == field.name()) => problems.push(
                Problem::new(at, format!("column {} is declared twice", field.name())),
            ),
            Ok(field) => fields.push(field),
            Err(message) => problems.push(Problem::new(at, format!("{decl:?}: {message}"))),
        }
    }
    (problems.len() == before).then(|| Arc::new(Schema::new(fields)))
}
