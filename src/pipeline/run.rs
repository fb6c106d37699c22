//! `coinstream run` (and the `ingest` shortcuts): the configured source, transform and sink as
//! one streaming query, until the source is exhausted or SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use engine::checkpoint::Checkpoint;
use engine::decode::RecordDecoder;
use engine::runtime::StreamingQuery;
use tokio::sync::watch;

use super::query::run_query;
use super::{plan, take_output};
use crate::cli::ProgressFormat;
use crate::ui::page::Page;
use crate::ui::taps::{PageDeadLetters, PageSink};
use crate::ui::{Ui, UiBind};
use coinstream::config::Config;
use connectors::SinkConfig;

/// Runs the configured pipeline until its source is exhausted or SIGINT/SIGTERM (`run`, and the
/// `ingest` shortcuts).
///
/// The UI endpoints are served where `ui` says from before the source is opened until the
/// process exits.
pub(crate) async fn run(
    config: Config,
    progress: ProgressFormat,
    ui: UiBind,
) -> anyhow::Result<()> {
    let (_ctx, input, transforms) = plan(&config).await?;
    let transform = take_output(&config, transforms)?;
    if matches!(progress, ProgressFormat::Json) && matches!(config.sink, SinkConfig::Stdout(_)) {
        // Both would write to stdout, and a reader of either could no longer parse it.
        anyhow::bail!(
            "--progress json prints the progress records to stdout, where sink.type = \"stdout\" \
             prints its rows: use --progress human (records as lines on stderr) or another sink"
        );
    }
    // Before the sink or the checkpoint is touched: a stateful query whose output mode cannot
    // work (append without a window or a watermark) would write nothing, ever.
    if let Some(agg) = transform.stateful() {
        agg.check(config.transforms.output_mode, config.watermark.as_ref())
            .map_err(|m| {
                anyhow::anyhow!(
                    "transforms.output_mode = \"{}\": {m}",
                    config.transforms.output_mode
                )
            })?;
    }
    // The sink is checked against the transform's output columns (a Parquet partition column, a
    // Cassandra key) before the checkpoint folder is opened or the source read.
    let sink = connectors::build_sink(&config.sink, &transform.schema())?;
    // The live page gets each committed batch's rows and dead letters from these wrappers and
    // its progress from `on_progress`, which publishes them together.
    let page = Arc::new(Page::new());
    let sink = Box::new(PageSink::new(sink, page.clone()));
    // Before the checkpoint and the source: an explicit `--ui` that cannot bind stops the run
    // before it reads anything.
    let state = Arc::new(Ui::new()?);
    if let Some(listener) = crate::ui::bind(ui).await? {
        let addr = listener.local_addr()?;
        tracing::info!("UI and metrics on http://{addr}");
        crate::ui::serve(listener, state.clone(), page.clone());
    }
    let checkpoint = config
        .engine
        .checkpoint_dir
        .as_ref()
        .map(Checkpoint::open)
        .transpose()?;
    let query = StreamingQuery {
        source: connectors::build_source(&config.source)?,
        decoder: RecordDecoder::new(config.input_schema.clone())
            .with_decimal_policy(config.decimal_policy),
        input,
        transform,
        sink,
        dead_letters: Box::new(PageDeadLetters::new(
            connectors::build_dead_letter(&config.dead_letter)?,
            page.clone(),
        )),
        checkpoint,
        trigger: config.engine.trigger,
        max_records_per_batch: config.engine.max_records_per_batch.get(),
        output_mode: config.transforms.output_mode,
        watermark: config.watermark.clone(),
        shared_state: config
            .state
            .as_ref()
            .map(|st| connectors::build_state(st, &config.sink))
            .transpose()?,
        on_progress: Box::new({
            let mut records = Records::default();
            move |p| {
                // Recorded even without a server: cheap, and it keeps one code path.
                state.record(p);
                page.publish(p);
                match progress {
                    ProgressFormat::Human => eprintln!("{}", p.human_line()),
                    ProgressFormat::Json => records.print(&p.json_line()),
                }
            }
        }),
    };
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Stopping after the current batch.");
        let _ = stop.send(true);
    });
    let summary = query.run(shutdown).await?;
    tracing::info!(
        batches = summary.batches,
        input_rows = summary.input_rows,
        output_rows = summary.output_rows,
        dead_letters = summary.dead_letters,
        "Run finished."
    );
    if let Some(report) = &config.report {
        let sql = std::fs::read_to_string(report)
            .with_context(|| format!("reading report {}", report.display()))?;
        let table = run_query(&config, &sql, None)
            .await
            .with_context(|| format!("report {}", report.display()))?;
        match progress {
            ProgressFormat::Human => println!("{table}"),
            // stdout carries the records only, so that every line of it parses as one.
            ProgressFormat::Json => eprintln!("{table}"),
        }
    }
    Ok(())
}

/// Where `--progress json` prints: one record per line on stdout (logs and the report go to
/// stderr), so `coinstream run --progress json | jq .numInputRows` sees records only.
#[derive(Default)]
struct Records {
    /// The reader closed stdout (`| head -3`): the run goes on without printing records, as
    /// its output goes to the sink, not to stdout.
    closed: bool,
}

impl Records {
    fn print(&mut self, line: &str) {
        if self.closed {
            return;
        }
        use std::io::Write;
        // The line and its newline in one `write_all`: stdout's line buffer then hands the whole
        // record to the pipe in one write (`writeln!` would write a record longer than that
        // buffer without its newline first, and a log line on a shared pipe could land between).
        let mut out = std::io::stdout().lock();
        if let Err(e) = out
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| out.flush())
        {
            self.closed = true;
            tracing::warn!(error = %e, "Cannot print progress records to stdout; the run goes on without them.");
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
