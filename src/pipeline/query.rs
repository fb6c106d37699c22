//! `coinstream query`: SQL over the store the sink writes (the Delta table, the Parquet folder or
//! the Cassandra table, named after the output transform) and the reference tables; also the
//! `report` of `run`.

use anyhow::bail;
use connectors::SinkConfig;
use connectors::delta::AsOf;
use engine::context::EngineContext;

use super::{plan, take_output};
use coinstream::config::Config;

/// Prints the result of `sql` over the store and the reference tables; with `as_of`, over the
/// Delta table as that version or instant left it.
pub(super) async fn query(config: &Config, sql: &str, as_of: Option<&AsOf>) -> anyhow::Result<()> {
    println!("{}", run_query(config, sql, as_of).await?);
    Ok(())
}

/// Runs SQL over the store (as a table named after the output transform) and the reference tables.
/// An empty result still shows its columns.
pub(super) async fn run_query(
    config: &Config,
    sql: &str,
    as_of: Option<&AsOf>,
) -> anyhow::Result<String> {
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
    let (session, name) = (ctx.session(), &config.output);
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
    Ok(arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?.to_string())
}

/// The Cassandra table the sink writes, under the output transform's name (as the Parquet
/// store) and under its own table name unless another table already has that name.
async fn register_cassandra(
    ctx: &EngineContext,
    config: &Config,
    cassandra: &connectors::cassandra::CassandraConfig,
    schema: arrow::datatypes::SchemaRef,
) -> anyhow::Result<()> {
    let mut names = vec![config.output.as_str()];
    if cassandra.table != config.output && !ctx.session().table_exist(cassandra.table.as_str())? {
        names.push(cassandra.table.as_str());
    }
    connectors::cassandra::register_table(ctx.session(), &names, cassandra, schema).await?;
    Ok(())
}
