//! What each subcommand wires together.

use anyhow::{Context, bail};
use connectors::SinkConfig;
use engine::checkpoint::Checkpoint;
use engine::context::{EngineContext, InputSlot};
use engine::decode::RecordDecoder;
use engine::runtime::StreamingQuery;
use engine::transform::{PlannedTransform, TransformFile};
use engine::{PollLimits, StartRequest};
use tokio::sync::watch;

use std::io::Write;

use crate::cli::{Command, GenerateArgs, GenerateFormat, ProgressFormat};
use coinstream::config::Config;

pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            set,
            trigger,
            progress,
            max_records_per_batch,
        } => {
            let mut config = Config::load_with(&config, &set)?;
            if let Some(t) = trigger {
                config.trigger = t.parse().context("--trigger")?;
            }
            if let Some(n) = max_records_per_batch {
                config.max_records_per_batch = n
                    .try_into()
                    .context("--max-records-per-batch must be at least 1")?;
            }
            run(config, progress).await
        }
        Command::Explain {
            config,
            set,
            analyze,
            transform,
        } => {
            explain(
                &Config::load_with(&config, &set)?,
                analyze,
                transform.as_deref(),
            )
            .await
        }
        Command::Query { config, set, sql } => {
            query(&Config::load_with(&config, &set)?, &sql).await
        }
        Command::Generate(args) => generate(args).await,
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
    for file in &config.transform_files {
        transforms.push(ctx.register_transform(TransformFile::read(file)?).await?);
    }
    Ok((ctx, slot, transforms))
}

fn take_output(
    config: &Config,
    transforms: Vec<PlannedTransform>,
) -> anyhow::Result<PlannedTransform> {
    match transforms.into_iter().find(|t| t.name() == config.output) {
        Some(t) => Ok(t),
        None => bail!("transforms.output {:?} was not planned", config.output),
    }
}

/// Runs the configured pipeline until its source is exhausted or SIGINT/SIGTERM (`run`, and the
/// `ingest` shortcuts).
pub(crate) async fn run(config: Config, progress: ProgressFormat) -> anyhow::Result<()> {
    let (_ctx, input, transforms) = plan(&config).await?;
    let transform = take_output(&config, transforms)?;
    let checkpoint = config
        .checkpoint_dir
        .as_ref()
        .map(Checkpoint::open)
        .transpose()?;
    let sink = connectors::build_sink(&config.sink, &transform.schema())?;
    let query = StreamingQuery {
        source: connectors::build_source(&config.source)?,
        decoder: RecordDecoder::new(config.input_schema.clone())
            .with_decimal_policy(config.decimal_policy),
        input,
        transform,
        sink,
        dead_letters: connectors::build_dead_letter(&config.dead_letter)?,
        checkpoint,
        trigger: config.trigger,
        max_records_per_batch: config.max_records_per_batch.get(),
        on_progress: Box::new(move |p| match progress {
            ProgressFormat::Human => eprintln!("{}", p.human_line()),
            ProgressFormat::Json => eprintln!("{}", p.json_line()),
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
        println!(
            "{}",
            run_query(&config, &sql)
                .await
                .with_context(|| format!("report {}", report.display()))?
        );
    }
    Ok(())
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

async fn explain(config: &Config, analyze: bool, only: Option<&str>) -> anyhow::Result<()> {
    let (_ctx, input, transforms) = plan(config).await?;
    if let Some(name) = only
        && !transforms.iter().any(|t| t.name() == name)
    {
        let names: Vec<&str> = transforms.iter().map(|t| t.name()).collect();
        bail!("no transform {name:?}; the config has {}", names.join(", "));
    }
    for t in transforms
        .iter()
        .filter(|t| only.is_none_or(|n| n == t.name()))
    {
        println!("{}\n", t.explain());
        if analyze {
            let mut source = connectors::build_source(&config.source)?;
            source
                .start(StartRequest {
                    available_now: true,
                    ..Default::default()
                })
                .await?;
            let limits = PollLimits {
                max_records: config.max_records_per_batch.get(),
                max_wait: std::time::Duration::from_secs(2),
            };
            let records = match source.poll(limits).await? {
                engine::Poll::Batch(b) => b.records,
                _ => Vec::new(),
            };
            let decoded = RecordDecoder::new(config.input_schema.clone())
                .with_decimal_policy(config.decimal_policy)
                .decode(&records)?;
            let rows_in = decoded.batch.num_rows();
            input.set(vec![decoded.batch]);
            let (out, plan) = t.execute().await?;
            let rows_out: usize = out.iter().map(|b| b.num_rows()).sum();
            println!(
                "-- analyzed on one batch: {} messages, {} rows decoded, {} dead letters, {} rows out --\n{}",
                records.len(),
                rows_in,
                decoded.dead_letters.len(),
                rows_out,
                PlannedTransform::explain_executed(&plan)
            );
        }
    }
    Ok(())
}

async fn query(config: &Config, sql: &str) -> anyhow::Result<()> {
    println!("{}", run_query(config, sql).await?);
    Ok(())
}

/// Runs SQL over the store (as a table named after the output transform) and the reference tables.
/// An empty result still shows its columns.
async fn run_query(config: &Config, sql: &str) -> anyhow::Result<String> {
    let SinkConfig::Parquet(p) = &config.sink else {
        bail!(
            "query reads the Parquet store; this config's sink is {:?}",
            config.sink
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
    connectors::parquet::register_store(ctx.session(), &config.output, &p.path, schema).await?;
    let frame = ctx.session().sql(sql).await?;
    let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await?;
    Ok(arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?.to_string())
}

async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let GenerateArgs {
        count,
        rate,
        out,
        topic,
        brokers,
        compression,
        format,
        seed,
        start,
        portfolio,
        coin_map,
    } = args;
    if !(rate > 0.0 && rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    let spacing_us = (1e6 / rate) as i64;
    let start_us = match start {
        Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
            .context("--start must be RFC 3339")?
            .timestamp_micros(),
        None => chrono::Utc::now().timestamp_micros() - spacing_us * count as i64,
    };
    let mut generator = connectors::generate::Generator::from_files(
        &portfolio, &coin_map, seed, start_us, spacing_us,
    )?;
    let ingest_time = connectors::common::trade::rfc3339_micros(chrono::Utc::now());
    if let Some(topic) = topic {
        let brokers = brokers.unwrap_or_else(connectors::kafka::default_brokers);
        let producer = connectors::kafka::producer::TopicProducer::new(
            &brokers,
            &topic,
            compression,
            &Default::default(),
        )?;
        let records = (0..count).map(|_| {
            let trade = generator.next_trade();
            let record = generator.record(&trade, &ingest_time);
            (record.symbol.clone(), record.to_json())
        });
        let sent = producer.send_all(records).await?;
        eprintln!("published {sent} trades to {topic} on {brokers}");
        return Ok(());
    }
    let out = out.context("--out or --topic is required")?;
    let file =
        std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    match format {
        GenerateFormat::Feed => {
            connectors::generate::write_feed(&mut generator, count, &mut writer)?
        }
        GenerateFormat::Record => {
            for _ in 0..count {
                let trade = generator.next_trade();
                writer.write_all(&generator.record(&trade, &ingest_time).to_json())?;
                writer.write_all(b"\n")?;
            }
        }
    }
    writer.flush()?;
    eprintln!(
        "wrote {count} trades for {} products to {}",
        generator.product_count(),
        out.display()
    );
    Ok(())
}
