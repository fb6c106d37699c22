//! `coinstream query`: SQL over the Parquet store (a table named after the output transform) and
//! the reference tables; also the `report` of `run`.

use anyhow::bail;
use connectors::SinkConfig;
use engine::context::EngineContext;

use super::{plan, take_output};
use coinstream::config::Config;

/// Prints the result of `sql` over the store and the reference tables.
pub(super) async fn query(config: &Config, sql: &str) -> anyhow::Result<()> {
    println!("{}", run_query(config, sql).await?);
    Ok(())
}

/// Runs SQL over the store (as a table named after the output transform) and the reference tables.
/// An empty result still shows its columns.
pub(super) async fn run_query(config: &Config, sql: &str) -> anyhow::Result<String> {
    let SinkConfig::Parquet(p) = &config.sink else {
        bail!(
            "query reads the Parquet store (`[sink] type = \"parquet\"`); this config's sink is \
             type = {:?}: read its results where that sink writes them (for Cassandra, with cqlsh)",
            config.sink.type_name()
        );
    };
    // The output's schema, for a store that holds no rows yet; planned in a context of its own,
    // where the transforms' views do not shadow the store's table.
    let (_ctx, _input, transforms) = plan(config).await?;
    let schema = take_output(config, transforms)?.schema();
    let mut ctx = EngineContext::new(&config.context);
    for table in &config.references {
        ctx.register_reference(table)?;
    }
    connectors::parquet::register_store(ctx.session(), &config.output, p, schema).await?;
    let frame = ctx.session().sql(sql).await?;
    let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await?;
    Ok(arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?.to_string())
}
