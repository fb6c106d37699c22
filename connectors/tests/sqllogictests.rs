//! SQL golden tests: every `sql/tests/<transform>.slt` runs against a fresh production context in
//! which the transform `sql/<transform>.sql` is planned exactly as `coinstream run` plans it. The
//! input and reference tables are created empty from their one declaration, the DDL files
//! `sql/tables/*.sql` (the ones the shipped configs list in `[tables]`), or the files a
//! `# tables: <path> ...` line of the `.slt` file names (relative to the repository, for a
//! transform whose input table is declared elsewhere, as `sql/passthrough.sql`'s `records`); the
//! `.slt` file inserts its fixture rows.
//!
//! A `query` record's column letters are checked against the result's Arrow types, as
//! DataFusion's runner does: `B` boolean, `I` integer, `R` float or decimal, `T` text, `D` date,
//! `P` timestamp, `?` anything else. A wrong letter fails the record.
//!
//! `cargo test -p coinstream-connectors --test sqllogictests -- --complete` rewrites the expected
//! results (and letters) of every `.slt` file from the actual output instead of checking them;
//! review the diff before committing it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::datasource::MemTable;
use engine::context::{ContextOptions, EngineContext};
use engine::schema::TableDecl;
use engine::transform::TransformFile;
use sqllogictest::harness::{Arguments, Failed, Trial, run};
use sqllogictest::{
    ColumnType, DBOutput, Runner, default_normalizer, default_validator, strict_column_validator,
};

/// The flag that rewrites the `.slt` files from actual output.
const COMPLETE: &str = "--complete";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The DDL files of the `.slt` file `slt`: those its `# tables:` line names, else every
/// `sql/tables/*.sql`.
fn table_files(slt: &Path) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(slt).map_err(|e| format!("{}: {e}", slt.display()))?;
    if let Some(named) = text.lines().find_map(|l| l.strip_prefix("# tables:")) {
        return Ok(named.split_whitespace().map(|f| repo().join(f)).collect());
    }
    let dir = repo().join("sql/tables");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every table of `files`; a name declared in two files is an error.
fn declared_tables(files: &[PathBuf]) -> Result<Vec<TableDecl>, String> {
    let mut tables: Vec<TableDecl> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        for table in engine::schema::parse_ddl(&file.display().to_string(), &text)
            .map_err(|e| e.to_string())?
        {
            if tables.iter().any(|t| t.name == table.name) {
                return Err(format!(
                    "{}: table {} is declared twice",
                    file.display(),
                    table.name
                ));
            }
            tables.push(table);
        }
    }
    Ok(tables)
}

/// A result column's type, by its sqllogictest letter (DataFusion's `DFColumnType`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum SltType {
    Boolean,
    Date,
    Integer,
    Float,
    Text,
    Timestamp,
    Other,
}

impl SltType {
    fn of(t: &DataType) -> Self {
        match t {
            DataType::Boolean => Self::Boolean,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => Self::Integer,
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => Self::Float,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Self::Text,
            DataType::Date32 | DataType::Date64 => Self::Date,
            DataType::Timestamp(..) => Self::Timestamp,
            _ => Self::Other,
        }
    }
}

impl ColumnType for SltType {
    fn from_char(value: char) -> Option<Self> {
        Some(match value {
            'B' => Self::Boolean,
            'D' => Self::Date,
            'I' => Self::Integer,
            'R' => Self::Float,
            'T' => Self::Text,
            'P' => Self::Timestamp,
            '?' => Self::Other,
            _ => return None,
        })
    }

    fn to_char(&self) -> char {
        match self {
            Self::Boolean => 'B',
            Self::Date => 'D',
            Self::Integer => 'I',
            Self::Float => 'R',
            Self::Text => 'T',
            Self::Timestamp => 'P',
            Self::Other => '?',
        }
    }
}

struct Db {
    ctx: EngineContext,
}

impl Db {
    async fn new(transform: &str, tables: &[PathBuf]) -> Result<Self, String> {
        let mut ctx = EngineContext::new(&ContextOptions::default());
        for table in declared_tables(tables)? {
            let empty = MemTable::try_new(table.schema, vec![vec![]]).map_err(|e| e.to_string())?;
            ctx.session()
                .register_table(table.name.as_str(), Arc::new(empty))
                .map_err(|e| e.to_string())?;
        }
        let file = repo().join("sql").join(format!("{transform}.sql"));
        ctx.register_transform(TransformFile::read(&file).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { ctx })
    }
}

#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

#[async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = SqlError;
    type ColumnType = SltType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<SltType>, SqlError> {
        let err = |e: datafusion::error::DataFusionError| SqlError(e.to_string());
        let frame = self.ctx.session().sql(sql).await.map_err(err)?;
        let is_statement = matches!(
            frame.logical_plan(),
            datafusion::logical_expr::LogicalPlan::Dml(_)
                | datafusion::logical_expr::LogicalPlan::Ddl(_)
                | datafusion::logical_expr::LogicalPlan::Statement(_)
        );
        let types: Vec<SltType> = frame
            .schema()
            .fields()
            .iter()
            .map(|f| SltType::of(f.data_type()))
            .collect();
        let batches = frame.collect().await.map_err(err)?;
        if is_statement {
            return Ok(DBOutput::StatementComplete(0));
        }
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SqlError(e.to_string()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| f.value(row).to_string())
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "coinstream"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Runs `path` (or, with `complete`, rewrites its expected results from actual output).
fn run_file(path: &Path, complete: bool) -> Result<(), Failed> {
    let transform = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tables = table_files(path)?;
    runtime.block_on(async {
        let mut runner = Runner::new(move || {
            let (transform, tables) = (transform.clone(), tables.clone());
            async move { Db::new(&transform, &tables).await.map_err(SqlError) }
        });
        runner.with_column_validator(strict_column_validator);
        if complete {
            runner
                .update_test_file(
                    path,
                    " ",
                    default_validator,
                    default_normalizer,
                    strict_column_validator,
                )
                .await
                .map_err(|e| Failed::from(e.to_string()))
        } else {
            runner
                .run_file_async(path)
                .await
                .map_err(|e| Failed::from(e.display(true).to_string()))
        }
    })
}

/// The type letters are checked, not decoration: the right letters pass, a text letter for a
/// timestamp (or a missing column) fails naming both.
fn wrong_letter_fails() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let script = |letters: &str| {
        format!(
            "statement ok\nINSERT INTO trades (symbol, trade_id, trade_time, price, size, side) \
             VALUES ('BTC-USD', 1, TIMESTAMP '2026-11-21T10:00:00Z', 1.5, 2, 'buy')\n\n\
             query {letters}\nSELECT symbol, trade_id, trade_time, price, side = 'buy' FROM trades\n\
             ----\nBTC-USD 1 2026-11-21T10:00:00Z 1.5000000000 true\n"
        )
    };
    runtime.block_on(async {
        let outcome = |letters: String| async move {
            let mut runner = Runner::new(|| async {
                let tables = [
                    repo().join("sql/tables/trades.sql"),
                    repo().join("sql/tables/reference.sql"),
                ];
                Db::new("profit", &tables).await.map_err(SqlError)
            });
            runner.with_column_validator(strict_column_validator);
            runner
                .run_script_async(&script(&letters))
                .await
                .map_err(|e| e.display(false).to_string())
        };
        outcome("TIPRB".into()).await?;
        for wrong in ["TITRB", "TIPR"] {
            match outcome(wrong.into()).await {
                Err(e) if e.contains("query columns mismatch") => {}
                other => {
                    return Err(format!(
                        "letters {wrong}: expected a mismatch, got {other:?}"
                    ));
                }
            }
        }
        Ok(())
    })
}

fn main() {
    // libtest's arguments do not know `--complete`: take it out before they are read.
    let mut args: Vec<String> = std::env::args().collect();
    let before = args.len();
    args.retain(|a| a != COMPLETE);
    let complete = args.len() != before;
    let dir = repo().join("sql/tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files under {}", dir.display());
    let sql_files: Vec<PathBuf> = std::fs::read_dir(repo().join("sql"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    let mut trials: Vec<Trial> = files
        .into_iter()
        .map(|path| {
            Trial::test(path.display().to_string(), move || {
                run_file(&path, complete)
            })
        })
        .collect();
    trials.push(Trial::test("a wrong column letter fails", || {
        wrong_letter_fails().map_err(Failed::from)
    }));
    // Every transform ships with its golden test.
    for sql in sql_files {
        let stem = sql
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let slt = dir.join(format!("{stem}.slt"));
        trials.push(Trial::test(
            format!("{} has a golden test", sql.display()),
            move || {
                if slt.exists() {
                    Ok(())
                } else {
                    Err(format!("{} is missing", slt.display()).into())
                }
            },
        ));
    }
    run(&Arguments::from_iter(args), trials).exit();
}
