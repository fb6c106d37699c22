//! What each subcommand wires together: config to components, components to the engine. One
//! file per subcommand (`run`, `explain`, `query`, `compact`, `generate`); `ingest` is
//! [`crate::ingest`].
//! Nothing here decodes, runs SQL or retries: the engine does.

mod compact;
mod explain;
mod generate;
mod query;
mod run;

use std::num::NonZeroUsize;

use anyhow::{anyhow, bail};
use engine::context::{EngineContext, InputSlot};
use engine::transform::{PlannedTransform, TransformFile};

use crate::cli::Command;
use coinstream::config::Config;

pub(crate) use run::run;

/// Runs one subcommand.
pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            trigger,
            progress,
            max_records_per_batch,
            ui,
        } => {
            let mut config = config.load()?;
            if let Some(t) = trigger {
                // The flag names itself: the engine's "config: trigger:" prefix would name a key
                // the user did not write.
                config.engine.trigger = t.parse().map_err(|e| match e {
                    engine::Error::Config { message, .. } => anyhow!("--trigger: {message}"),
                    other => anyhow::Error::new(other).context("--trigger"),
                })?;
            }
            if let Some(n) = max_records_per_batch {
                // The conversion's own error ("out of range integral type conversion") says
                // nothing a user can act on, so it is not kept as a cause.
                config.engine.max_records_per_batch = NonZeroUsize::new(n)
                    .ok_or_else(|| anyhow!("--max-records-per-batch: must be at least 1"))?;
            }
            run::run(config, progress, ui.bind()).await
        }
        Command::Explain {
            config,
            analyze,
            transform,
        } => explain::explain(&config.load()?, analyze, transform.as_deref()).await,
        Command::Query {
            config,
            sql,
            as_of,
            format,
        } => query::query(&config.load()?, &sql, as_of.as_ref(), format).await,
        Command::Compact {
            config,
            idle,
            retention,
        } => compact::compact(&config.load()?, idle, retention).await,
        Command::Generate(args) => generate::generate(args).await,
        Command::Ingest(command) => crate::ingest::dispatch(command).await,
    }
}

/// The engine context with reference tables, the input table and every transform planned.
async fn plan(
    config: &Config,
) -> anyhow::Result<(EngineContext, InputSlot, Vec<PlannedTransform>)> {
    let mut ctx = EngineContext::new(&config.context);
    for table in &config.references {
        ctx.register_reference(table)?;
    }
    let slot = ctx.register_input(&config.input_table, config.input_schema.clone())?;
    let mut transforms = Vec::new();
    for file in &config.transforms.files {
        transforms.push(ctx.register_transform(TransformFile::read(file)?).await?);
    }
    Ok((ctx, slot, transforms))
}

/// The transform whose rows go to the sink (`transforms.output`).
fn take_output(
    config: &Config,
    transforms: Vec<PlannedTransform>,
) -> anyhow::Result<PlannedTransform> {
    match transforms
        .into_iter()
        .find(|t| t.name() == config.transforms.output)
    {
        Some(t) => Ok(t),
        None => bail!(
            "transforms.output {:?} was not planned",
            config.transforms.output
        ),
    }
}
