//! SQL golden tests: every `sql/tests/<transform>.slt` runs against a fresh production context in
//! which the transform `<transform>` is planned exactly as `coinstream run` plans it. The input and
//! reference tables are created empty, from the declarations of the shipped config that uses the
//! transform (`coinstream.toml`, then `pipelines/*.toml` in name order: the first that uses it);
//! the `.slt` file inserts its fixture rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::datasource::MemTable;
use engine::context::{ContextOptions, EngineContext};
use engine::schema::parse_columns;
use engine::transform::TransformFile;
use sqllogictest::harness::{Arguments, Failed, Trial, run};
use sqllogictest::{DBOutput, DefaultColumnType, Runner};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The declarations a shipped config makes for a transform's tables.
struct Tables {
    input: (String, Vec<String>),
    references: Vec<(String, String, Vec<String>)>,
    files: Vec<PathBuf>,
}

fn shipped_configs() -> Vec<PathBuf> {
    let mut configs = vec![repo().join("coinstream.toml")];
    if let Ok(entries) = std::fs::read_dir(repo().join("pipelines")) {
        configs.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml")),
        );
        // In name order: where several configs use one transform, the first one's declarations
        // are the golden test's tables, whatever order the directory lists them in.
        configs[1..].sort();
    }
    configs
}

fn tables_for(transform: &str) -> Result<Tables, String> {
    for config in shipped_configs() {
        let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
        let value: toml::Value =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
        let strings = |v: Option<&toml::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let files: Vec<PathBuf> = strings(value.get("transforms").and_then(|t| t.get("files")))
            .iter()
            .map(|f| config.parent().unwrap().join(f))
            .collect();
        if !files
            .iter()
            .any(|f| f.file_stem().is_some_and(|s| s == transform))
        {
            continue;
        }
        let input = value.get("input");
        let table = input
            .and_then(|i| i.get("table"))
            .and_then(|t| t.as_str())
            .unwrap_or("trades")
            .to_owned();
        let mut columns = strings(input.and_then(|i| i.get("columns")));
        if columns.is_empty() {
            columns = connectors::common::trade::trade_columns();
        }
        let mut references = Vec::new();
        for r in value
            .get("reference")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            let name = r
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let key = r
                .get("key")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let mut cols = strings(r.get("columns"));
            if let Some(v) = r.get("value").and_then(|v| v.as_str()) {
                cols.push(v.to_owned());
            }
            references.push((name, key, cols));
        }
        return Ok(Tables {
            input: (table, columns),
            references,
            files,
        });
    }
    Err(format!("no shipped config uses transform {transform}"))
}

struct Db {
    ctx: EngineContext,
}

impl Db {
    async fn new(transform: &str) -> Result<Self, String> {
        let tables = tables_for(transform)?;
        let ctx = EngineContext::new(&ContextOptions::default());
        let empty = |schema: arrow::datatypes::SchemaRef| {
            MemTable::try_new(schema, vec![vec![]]).map(Arc::new)
        };
        let (name, columns) = &tables.input;
        let schema = parse_columns("input.columns", columns).map_err(|e| e.to_string())?;
        ctx.session()
            .register_table(name.as_str(), empty(schema).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        for (name, key, columns) in &tables.references {
            let mut fields = vec![arrow::datatypes::Field::new(
                key,
                arrow::datatypes::DataType::Utf8,
                false,
            )];
            let declared = parse_columns(name, columns).map_err(|e| e.to_string())?;
            fields.extend(declared.fields().iter().map(|f| f.as_ref().clone()));
            let schema = Arc::new(arrow::datatypes::Schema::new(fields));
            ctx.session()
                .register_table(name.as_str(), empty(schema).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let mut ctx = ctx;
        for file in &tables.files {
            ctx.register_transform(TransformFile::read(file).map_err(|e| e.to_string())?)
                .await
                .map_err(|e| e.to_string())?;
        }
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
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let err = |e: datafusion::error::DataFusionError| SqlError(e.to_string());
        let frame = self.ctx.session().sql(sql).await.map_err(err)?;
        let is_statement = matches!(
            frame.logical_plan(),
            datafusion::logical_expr::LogicalPlan::Dml(_)
                | datafusion::logical_expr::LogicalPlan::Ddl(_)
                | datafusion::logical_expr::LogicalPlan::Statement(_)
        );
        let batches = frame.collect().await.map_err(err)?;
        if is_statement {
            return Ok(DBOutput::StatementComplete(0));
        }
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        let mut width = 0;
        for batch in &batches {
            width = batch.num_columns();
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
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "coinstream"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn run_file(path: &Path) -> Result<(), Failed> {
    let transform = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut runner = Runner::new(move || {
            let transform = transform.clone();
            async move { Db::new(&transform).await.map_err(SqlError) }
        });
        runner
            .run_file_async(path)
            .await
            .map_err(|e| Failed::from(e.display(true).to_string()))
    })
}

fn main() {
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
        .map(|path| Trial::test(path.display().to_string(), move || run_file(&path)))
        .collect();
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
    run(&Arguments::from_args(), trials).exit();
}
