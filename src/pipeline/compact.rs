//! `coinstream compact`: Delta OPTIMIZE (bin-packing) and VACUUM on the table a config writes.

use std::time::Duration;

use anyhow::{Context, bail};
use connectors::SinkConfig;
use connectors::delta::maintenance::{self, Options};

use coinstream::config::Config;

/// Compacts every partition (or those idle for `idle`), then vacuums with the config's retention
/// or `retention`; prints what it did.
pub(super) async fn compact(
    config: &Config,
    idle: Option<Duration>,
    retention: Option<Duration>,
) -> anyhow::Result<()> {
    let SinkConfig::Delta(d) = &config.sink else {
        bail!(
            "compact works on a Delta table (`[sink] type = \"delta\"`); this config's sink is \
             type = {:?}",
            config.sink.type_name()
        );
    };
    let table = connectors::delta::open(&d.path)
        .await
        .with_context(|| format!("opening the Delta table {}", d.path.display()))?;
    if table.version().is_none() {
        bail!(
            "{} holds no Delta table yet; run the pipeline first",
            d.path.display()
        );
    }
    let idle_since_ms = idle
        .map(|i| -> anyhow::Result<i64> {
            let i = chrono::Duration::from_std(i).context("--idle")?;
            Ok((chrono::Utc::now() - i).timestamp_millis())
        })
        .transpose()?;
    let mut options = Options::of(&d.compaction, idle_since_ms);
    if let Some(retention) = retention {
        options.retention = retention;
    }
    let done = maintenance::compact(table, options)
        .await
        .with_context(|| format!("compacting {}", d.path.display()))?;
    println!("{}: {done}", d.path.display());
    Ok(())
}
