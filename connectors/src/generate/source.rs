//! `[source] type = "generate"`: generated trades as bus records, at a rate or as fast as asked.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use engine::{
    Error, Offsets, Poll, PollLimits, RawRecord, Result, Source, SourceBatch, StartRequest,
};
use serde::Deserialize;

use super::Generator;
use crate::common::trade::rfc3339_micros;

/// The topic name generated records carry.
const TOPIC: &str = "generate";

/// `[source] type = "generate"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// The portfolio file (its products get 90% of trades).
    pub portfolio: PathBuf,
    /// The coin map (names).
    pub coin_map: PathBuf,
    /// Stop after this many trades; unlimited if absent (then a rate is required).
    pub count: Option<u64>,
    /// Trades per second; as fast as batches are taken if absent.
    pub rate_per_sec: Option<f64>,
    /// The random seed (default 42).
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_seed() -> u64 {
    42
}

/// The generate source.
pub struct GenerateSource {
    config: GenerateConfig,
    generator: Generator,
    produced: u64,
    started: Instant,
}

impl GenerateSource {
    /// Builds the source; the portfolio and coin map are read now.
    pub fn new(config: GenerateConfig) -> Result<Self> {
        if config.count.is_none() && config.rate_per_sec.is_none() {
            return Err(Error::config(
                "source.count",
                "a generate source needs a count, a rate_per_sec, or both",
            ));
        }
        if config
            .rate_per_sec
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err(Error::config(
                "source.rate_per_sec",
                "must be a positive number",
            ));
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let spacing_us = config.rate_per_sec.map_or(1_000, |r| (1e6 / r) as i64);
        let generator = Generator::from_files(
            &config.portfolio,
            &config.coin_map,
            config.seed,
            now_us,
            spacing_us,
        )?;
        Ok(Self {
            config,
            generator,
            produced: 0,
            started: Instant::now(),
        })
    }

    fn due(&self) -> u64 {
        let by_rate = match self.config.rate_per_sec {
            Some(rate) => (self.started.elapsed().as_secs_f64() * rate) as u64,
            None => u64::MAX,
        };
        by_rate.min(self.config.count.unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl Source for GenerateSource {
    fn description(&self) -> String {
        format!("generate (seed {})", self.config.seed)
    }

    async fn start(&mut self, request: StartRequest) -> Result<()> {
        if request.available_now && self.config.count.is_none() {
            return Err(Error::config(
                "source.count",
                "an available-now run of a generate source needs a count",
            ));
        }
        self.started = Instant::now();
        Ok(())
    }

    async fn poll(&mut self, limits: PollLimits) -> Result<Poll> {
        if self.config.count.is_some_and(|c| self.produced >= c) {
            return Ok(Poll::Exhausted);
        }
        let deadline = Instant::now() + limits.max_wait;
        let mut due = self.due();
        while due <= self.produced && Instant::now() < deadline {
            let rate = self.config.rate_per_sec.unwrap_or(1_000.0);
            let pause = Duration::from_secs_f64(1.0 / rate).min(deadline - Instant::now());
            tokio::time::sleep(pause).await;
            due = self.due();
        }
        let n = due
            .saturating_sub(self.produced)
            .min(limits.max_records as u64);
        if n == 0 {
            return Ok(Poll::Idle);
        }
        let ingest_time = rfc3339_micros(chrono::Utc::now());
        let received_at = SystemTime::now();
        let first = self.produced as i64;
        let mut records = Vec::with_capacity(n as usize);
        for i in 0..n as i64 {
            let trade = self.generator.next_trade();
            let payload = self.generator.record(&trade, &ingest_time).to_json();
            records.push(RawRecord {
                topic: TOPIC.into(),
                partition: 0,
                offset: first + i,
                payload,
                rejected: None,
                received_at,
            });
        }
        self.produced += n;
        let (mut start, mut end) = (Offsets::new(), Offsets::new());
        start.set(TOPIC, 0, first);
        end.set(TOPIC, 0, self.produced as i64);
        Ok(Poll::Batch(SourceBatch {
            records,
            start,
            end,
        }))
    }

    async fn commit(&mut self, _end: &Offsets) -> Result<()> {
        // Generated trades cannot be replayed after a restart (their times follow the clock), so
        // there is nothing to make durable.
        Ok(())
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        vec![("generated", self.produced)]
    }
}
