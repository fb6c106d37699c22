//! `coinstream explain [--analyze]`: the plans of the configured transforms, and with
//! `--analyze` their metrics over one batch of the configured source.

use std::time::Duration;

use anyhow::bail;
use connectors::stdout::{NullDeadLetters, NullSink};
use engine::decode::RecordDecoder;
use engine::runtime::StreamingQuery;
use engine::transform::PlannedTransform;
use engine::trigger::Trigger;

use super::plan;
use coinstream::config::Config;

/// How long `--analyze` waits for its one batch.
const ANALYZE_MAX_WAIT: Duration = Duration::from_secs(2);

/// Prints each transform's plans; with `analyze`, runs one batch of the configured source
/// through each ([`StreamingQuery::run_one_batch`]) and prints the plan with its metrics.
pub(super) async fn explain(
    config: &Config,
    analyze: bool,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let (_ctx, input, transforms) = plan(config).await?;
    if let Some(name) = only
        && !transforms.iter().any(|t| t.name() == name)
    {
        let names: Vec<&str> = transforms.iter().map(|t| t.name()).collect();
        bail!("no transform {name:?}; the config has {}", names.join(", "));
    }
    for transform in transforms
        .into_iter()
        .filter(|t| only.is_none_or(|n| n == t.name()))
    {
        println!(
            "{}\n",
            transform.explain(config.transforms.output_mode, config.watermark.as_ref())
        );
        if analyze {
            // The engine's own batch path; nothing is written or committed, so the sink and
            // the dead-letter output are null ones.
            let mut query = StreamingQuery {
                source: connectors::build_source(&config.source)?,
                decoder: RecordDecoder::new(config.input_schema.clone())
                    .with_decimal_policy(config.decimal_policy),
                input: input.clone(),
                transform,
                sink: Box::new(NullSink::default()),
                dead_letters: Box::new(NullDeadLetters),
                checkpoint: None,
                trigger: Trigger::AvailableNow,
                max_records_per_batch: config.engine.max_records_per_batch.get(),
                output_mode: config.transforms.output_mode,
                watermark: config.watermark.clone(),
                shared_state: None,
                on_progress: Box::new(|_| {}),
            };
            let stateful = query.transform.stateful().is_some();
            let one = query.run_one_batch(ANALYZE_MAX_WAIT).await?;
            let rows_out: usize = one.output.iter().map(|b| b.num_rows()).sum();
            // A stateful transform's batch ends in partial aggregates (one row per group), which
            // the state merges; one batch alone writes nothing.
            let out = if stateful {
                "groups of partial aggregates"
            } else {
                "rows out"
            };
            println!(
                "-- analyzed on one batch: {} messages, {} rows decoded, {} dead letters, {} {out} --\n{}",
                one.messages,
                one.decoded_rows,
                one.dead_letters.len(),
                rows_out,
                PlannedTransform::explain_executed(&one.plan)
            );
        }
    }
    Ok(())
}
