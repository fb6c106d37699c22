//! `coinstream query`: SQL over the store the sink writes (the Delta table, the Parquet folder or
//! the Cassandra table, named after the output transform) and the reference tables; also the
//! `report` of `run`.

use std::io::Write;

use anyhow::bail;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use connectors::SinkConfig;
use connectors::delta::AsOf;
use engine::context::EngineContext;

use super::{plan, take_output};
use crate::cli::QueryFormat;
use coinstream::config::Config;

/// Prints the result of `sql` over the store and the reference tables in `format` to stdout;
/// with `as_of`, over the Delta table as that version or instant left it.
pub(super) async fn query(
    config: &Config,
    sql: &str,
    as_of: Option<&AsOf>,
    format: QueryFormat,
) -> anyhow::Result<()> {
    let (schema, batches) = query_batches(config, sql, as_of).await?;
    let mut out = Vec::new();
    match format {
        QueryFormat::Table => {
            let table = arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?;
            writeln!(out, "{table}")?;
        }
        QueryFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            // The header is written with the first batch, so an empty result still gets one.
            writer.write(&RecordBatch::new_empty(schema))?;
            for batch in &batches {
                writer.write(batch)?;
            }
        }
        QueryFormat::Json => {
            // Nulls as `null`, so every object has every column.
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(&mut out);
            for batch in &batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    // One write of the whole result: a reader closing the pipe early surfaces as the plain I/O
    // error that `main` treats as success.
    std::io::stdout().lock().write_all(&out)?;
    Ok(())
}

/// Runs SQL over the store (as a table named after the output transform) and the reference
/// tables, as an aligned table. An empty result still shows its columns.
pub(super) async fn run_query(
    config: &Config,
    sql: &str,
    as_of: Option<&AsOf>,
) -> anyhow::Result<String> {
    let (schema, batches) = query_batches(config, sql, as_of).await?;
    Ok(arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?.to_string())
}

/// The result of `sql` over the store and the reference tables: its schema (for a result with
/// no rows) and its batches.
async fn query_batches(
    config: &Config,
    sql: &str,
    as_of: Option<&AsOf>,
) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
    if as_of.is_some() && !matches!(config.sink, SinkConfig::Delta(_)) {
        bail!(
            "--as-of reads an earlier version of a Delta table; this config's sink is type = {:?}",
            config.sink.type_name()
        );
    }
    // The output's schema, for a store that holds no rows yet; planned in a context of its own,
    // where the transforms' views do not shadow the store's table.
    let (_ctx, _input, transforms) = plan(config).await?;
    let schema = take_output(config, transforms)?.schema();
    let mut ctx = EngineContext::new(&config.context);
    for table in &config.references {
        ctx.register_reference(table)?;
    }
    let (session, name) = (ctx.session(), &config.transforms.output);
    match &config.sink {
        SinkConfig::Delta(d) => {
            connectors::delta::register_table(session, name, &d.path, schema, as_of).await?
        }
        SinkConfig::Parquet(p) => {
            connectors::parquet::register_store(session, name, p, schema).await?
        }
        SinkConfig::Cassandra(c) => register_cassandra(&ctx, config, c, schema).await?,
        other => bail!(
            "query reads the Delta table, the Parquet store or the Cassandra table the pipeline \
             writes; this config's sink is type = {:?}: read its results where that sink writes \
             them",
            other.type_name()
        ),
    }
    let frame = ctx.session().sql(sql).await?;
    let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await?;
    Ok((schema, batches))
}

/// The Cassandra table the sink writes, under the output transform's name (as the Parquet
/// store) and under its own table name unless another table already has that name.
async fn register_cassandra(
    ctx: &EngineContext,
    config: &Config,
    cassandra: &connectors::cassandra::CassandraConfig,
    schema: arrow::datatypes::SchemaRef,
) -> anyhow::Result<()> {
    let mut names = vec![config.transforms.output.as_str()];
    if cassandra.table != config.transforms.output
        && !ctx.session().table_exist(cassandra.table.as_str())?
    {
        names.push(cassandra.table.as_str());
    }
    connectors::cassandra::register_table(ctx.session(), &names, cassandra, schema).await?;
    Ok(())
}
