"""Gate.io candles into Kafka on an Airflow schedule, for deployments that keep Airflow.

`coinstream ingest gateio` (the pipeline `pipelines/ingest-gateio.toml`) can run on its own and
polls on the interval's boundaries; this DAG is the alternative for a scheduler: every run does
one poll (`--once`) and exits 0. With `--state DIR` (the engine's checkpoint folder), a run starts
right after the last window the previous run published (however long ago that was, so a late or
skipped run loses nothing) and publishes each closed window once; the checkpoint moves only after
Kafka acknowledged the candles. Without it, each run reaches back 100 windows and overlaps the
last one; a window published twice overwrites itself in Cassandra (primary key pair, interval,
window start). A non-zero exit (an API error with its label and message) fails the task and
Airflow's retries take over; an unreachable Kafka is retried by the engine until the task's
execution_timeout.

Configured by the worker's environment, read when the DAG file is parsed (each default is what
production uses):
- COINSTREAM_BIN [coinstream]: the binary (on the worker's PATH by default);
- COINSTREAM_DIR [/app, the image's]: the working directory, holding `pipelines/`, `sql/` and
  `required_data/`;
- COINSTREAM_GATEIO_URL [https://api.gateio.ws/api/v4]: the REST API's base URL;
- COINSTREAM_GATEIO_PAIRS [BTC_USDT,ETH_USDT,SOL_USDT]: the currency pairs;
- COINSTREAM_GATEIO_STATE [/var/lib/coinstream/gateio-checkpoint]: the state folder, which must
  live where every run of the task can read it (one worker, or a shared volume);
- KAFKA_BOOTSTRAP [127.0.0.1:9092] and COINSTREAM_GATEIO_TOPIC [crypto_candles]: where the
  candles go (dead letters to `<topic>_dead_letters`).

Written for Airflow 3 (`airflow.sdk`, the standard provider's BashOperator). tests/airflow.rs
runs it with `airflow dags test` against a local Gate.io stand-in and a real Kafka.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

COINSTREAM = os.environ.get("COINSTREAM_BIN", "coinstream")
WORKDIR = os.environ.get("COINSTREAM_DIR", "/app")
GATEIO_URL = os.environ.get("COINSTREAM_GATEIO_URL", "https://api.gateio.ws/api/v4")
PAIRS = os.environ.get("COINSTREAM_GATEIO_PAIRS", "BTC_USDT,ETH_USDT,SOL_USDT")
STATE = os.environ.get("COINSTREAM_GATEIO_STATE", "/var/lib/coinstream/gateio-checkpoint")
KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
TOPIC = os.environ.get("COINSTREAM_GATEIO_TOPIC", "crypto_candles")

with DAG(
    dag_id="coinstream_gateio_candles",
    description="coinstream ingest gateio --once: closed 1m candles into Kafka",
    start_date=datetime(2026, 1, 1),
    schedule="*/5 * * * *",
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "coinstream",
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "execution_timeout": timedelta(minutes=4),
    },
    tags=["coinstream", "gateio", "ingest"],
) as dag:
    BashOperator(
        task_id="ingest_gateio_once",
        # Without a cwd the operator runs in a fresh temporary folder, where the shipped
        # pipeline's relative path (pipelines/ingest-gateio.toml) does not resolve.
        cwd=WORKDIR,
        bash_command=shlex.join(
            [
                COINSTREAM,
                "ingest",
                "gateio",
                "--once",
                "--url",
                GATEIO_URL,
                "--pairs",
                PAIRS,
                "--interval",
                "1m",
                "--state",
                STATE,
                "--brokers",
                KAFKA_BOOTSTRAP,
                "--topic",
                TOPIC,
            ]
        ),
    )

    # A backfill of the DAG run's own day can be run by hand, e.g.:
    #   coinstream ingest gateio --once --pairs BTC_USDT --interval 1m \
    #       --from 2026-11-20T00:00:00Z --to 2026-11-20T23:59:00Z
