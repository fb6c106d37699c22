"""The benchmark: coinstream against the seeds' Spark Structured Streaming job, side by side on the
same Kafka topic and the same Cassandra. Started by bench/run.sh, which installs what is needed;
see bench/README.md for what is measured and how.

Needs only the Python standard library for the coinstream part (`--coinstream-only`); the Spark
part runs bench/spark/job.py with --spark-python (a venv with pyspark), and the chart needs
matplotlib (skipped with a note when it cannot be imported).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import datetime as dt
import decimal
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cql  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
JAVA17 = os.environ.get("BENCH_JAVA", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java")
if not os.path.exists(JAVA17):
    JAVA17 = shutil.which("java") or JAVA17

ENGINES = {
    "spark_udf": "Spark, as the seeds wrote it (Python UDF)",
    "spark_sql": "Spark, done well (broadcast join in SQL)",
    "coinstream": "coinstream",
    "coinstream_tuned": "coinstream, Kafka source tuned",
}

# librdkafka properties of the coinstream_tuned variant (run it with --engines): a deeper and more
# eager prefetch than the Kafka source's defaults (20,000 messages per partition, 20 ms backoff),
# to show what prefetching costs and gains.
TUNED_SOURCE_PROPERTIES = {"fetch.queue.backoff.ms": "0", "queued.min.messages": "1000000"}


def is_coinstream(engine: str) -> bool:
    return engine.startswith("coinstream")

TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS {ks}.{table} (symbol text, coin_name text, trade_id bigint, "
    "trade_time timestamp, trade_date date, price decimal, size decimal, side text, profit decimal, "
    "PRIMARY KEY ((symbol, trade_date), trade_time, trade_id))"
)


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} bench: {msg}", file=sys.stderr, flush=True)


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


# --- machine ------------------------------------------------------------------------------------


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def proc_cpu_s(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pids() -> dict[str, int]:
    pids = {}
    out = subprocess.run([os.path.join(REPO, "scripts/services.sh"), "status"], text=True, capture_output=True)
    for name, pid in re.findall(r"^(\w+): up \(pid (\d+)\)", out.stdout + out.stderr, re.M):
        pids[name] = int(pid)
    return pids


def machine_facts(args) -> dict:
    facts = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S %Z").strip()}
    with open("/proc/cpuinfo") as f:
        models = re.findall(r"^model name\s*:\s*(.*)$", f.read(), re.M)
    facts["cpu"] = f"{models[0] if models else platform.processor()} × {os.cpu_count()}"
    with open("/proc/meminfo") as f:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
    facts["memory"] = f"{mem_kb / 2**20:.1f} GiB"
    facts["kernel"] = platform.release()
    facts["python"] = platform.python_version()
    try:
        facts["java"] = subprocess.run([JAVA17, "-version"], text=True, capture_output=True).stderr.splitlines()[0]
    except (OSError, IndexError):
        facts["java"] = "?"
    try:
        facts["coinstream"] = sh(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        facts["coinstream"] = "?"
    if args.spark_python:
        try:
            facts["pyspark"] = sh([args.spark_python, "-c", "import pyspark; print(pyspark.__version__)"]).stdout.strip()
        except (subprocess.CalledProcessError, OSError):
            facts["pyspark"] = "?"
    facts["kafka"] = "Apache Kafka 4.3.1 (KRaft, 1 node, scripts/services.sh)"
    facts["cassandra"] = "Apache Cassandra 5.0.9 (1 node, 1 GiB heap, scripts/services.sh)"
    facts["loadavg_at_start"] = loadavg()
    return facts


# --- Kafka ----------------------------------------------------------------------------------------


class Kafka:
    def __init__(self, brokers: str, jars: str):
        self.brokers, self.cp = brokers, os.path.join(jars, "*")

    def _tool(self, main: str, *args: str) -> str:
        return sh([JAVA17, "-cp", self.cp, main, "--bootstrap-server", self.brokers, *args]).stdout

    def create_topic(self, topic: str, partitions: int) -> None:
        self._tool(
            "org.apache.kafka.tools.TopicCommand",
            "--create", "--topic", topic, "--partitions", str(partitions), "--replication-factor", "1",
        )

    def create_input(self, topic: str, partitions: int) -> None:
        """An engine's input topic and its dead-letter topic `<topic>_dlq` (one partition)."""
        self.create_topic(topic, partitions)
        self.create_topic(f"{topic}_dlq", 1)

    def delete_topic(self, topic: str) -> None:
        try:
            self._tool("org.apache.kafka.tools.TopicCommand", "--delete", "--topic", topic)
        except subprocess.CalledProcessError as e:
            log(f"could not delete topic {topic}: {e.stderr.strip()[:300]}")

    def message_count(self, topic: str) -> int:
        out = self._tool("org.apache.kafka.tools.GetOffsetShell", "--topic", topic)
        return sum(int(line.rsplit(":", 1)[1]) for line in out.split() if line.startswith(topic + ":"))


# --- the engines --------------------------------------------------------------------------------


def toml_value(v) -> str:
    """`v` as the TOML text of a `--set` value: JSON's strings, numbers and arrays are TOML's; a
    dict becomes an inline table (keys quoted, so `fetch.min.bytes` stays one key)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def config_args(path: str, overrides: dict) -> list[str]:
    """`--config PATH --set KEY=VALUE ...`: a shipped file as it is, with only the keys a run must
    own changed (README "The config file": a table value replaces the whole key)."""
    args = ["--config", path]
    for key, value in overrides.items():
        args += ["--set", f"{key}={toml_value(value)}"]
    return args


def shipped_pipeline(pipeline: str, overrides: dict) -> list[str]:
    """config_args of `pipelines/<pipeline>`."""
    return config_args(os.path.join(REPO, "pipelines", pipeline), overrides)


def shipped_settings(pipeline: str) -> dict:
    """The shipped file's own keys, for the report (batch size, consistency)."""
    return shipped_settings_at(os.path.join(REPO, "pipelines", pipeline))


def shipped_settings_at(path: str) -> dict:
    import tomllib  # Python 3.11+; only the report needs it

    with open(path, "rb") as f:
        return tomllib.load(f)


def run_overrides(args, *, topic: str, group: str, table: str, checkpoint: str) -> dict:
    """The keys every coinstream run of the bench sets on a shipped Kafka → Cassandra pipeline: its
    own topic, group, keyspace, table, dead-letter topic and checkpoint, and the services'
    addresses."""
    return {
        "engine.checkpoint_dir": checkpoint,
        "source.brokers": args.brokers,
        "source.topics": [topic],
        "source.group_id": group,
        "sink.contact_points": args.cassandra.split(","),
        "sink.keyspace": args.keyspace,
        "sink.table": table,
        "dead_letter.topic": f"{topic}_dlq",
    }


PROFIT_PIPELINE = "kafka-cassandra.toml"
OHLCV_PIPELINE = "ohlcv-cassandra.toml"


def engine_command(args, engine: str, *, topic: str, table: str, sink: str, run_dir: str, live: bool,
                   trigger: str | None = None) -> tuple[list[str], str]:
    """The command line of one engine run and the regex of its "a batch was written" lines."""
    if is_coinstream(engine):
        overrides = run_overrides(args, topic=topic, group=f"{args.prefix}_{os.path.basename(run_dir)}",
                                  table=table, checkpoint=os.path.join(run_dir, "checkpoint"))
        if engine == "coinstream_tuned":
            overrides["source.properties"] = TUNED_SOURCE_PROPERTIES
        if sink in ("null", "delta"):
            # A table value replaces the whole [sink]: none of the Cassandra keys remain.
            overrides = {k: v for k, v in overrides.items() if not k.startswith("sink.")}
            overrides["sink"] = {"type": "null"} if sink == "null" else delta_sink(run_dir)
        trigger = trigger if live else "available-now"
        # The progress records go to stdout, the logs to stderr: measure.py reads both as one
        # stream, so the marker below sees the records.
        cmd = [args.coinstream_bin, "run", *shipped_pipeline(PROFIT_PIPELINE, overrides), "--trigger", trigger,
               "--progress", "json"]
        return cmd, r'"numInputRows":[1-9]'
    return spark_job(args, engine.split("_", 1)[1], sink="noop" if sink == "null" else "cassandra", topic=topic,
                     table=table, run_dir=run_dir, live=live,
                     extra=["--portfolio", os.path.join(REPO, "required_data/my_Portfolio.json"),
                            "--coin-map", os.path.join(REPO, "required_data/coin_map.json")])


def spark_job(args, variant: str, *, sink: str, topic: str, table: str, run_dir: str, live: bool,
              extra: list[str]) -> tuple[list[str], str]:
    """The command line of one run of bench/spark/job.py (`variant`, `extra` arguments) and the
    regex of its "a batch was written" lines."""
    cmd = [
        args.spark_python, os.path.join(BENCH, "spark/job.py"), "--variant", variant, "--sink", sink,
        "--topic", topic, "--brokers", args.brokers, "--cassandra", args.cassandra,
        "--keyspace", args.keyspace, "--table", table, "--jars", args.spark_jars, *extra,
        "--checkpoint", os.path.join(run_dir, "checkpoint"),
        "--max-offsets", str(args.spark_max_offsets), "--driver-memory", args.spark_driver_memory,
    ]
    if live:
        cmd += ["--trigger", "continuous-microbatch", "--stop-file", os.path.join(run_dir, "STOP")]
    return cmd, r"BENCH_BATCH "


def delta_sink(run_dir: str) -> dict:
    """The embedded store of the shipped coinstream.toml (a Delta table on disk, partitioned as
    it is), in the run's folder."""
    sink = dict(shipped_settings_at(os.path.join(REPO, "coinstream.toml"))["sink"])
    sink["path"] = os.path.join(run_dir, "profit")
    return sink


class DeltaLog:
    """The data files each commit of the Delta table at `table` added, per symbol: (lowest
    trade_id, highest trade_id, rows, commit time in µs) from the files' statistics in the log,
    where the commit time is the modification time of the commit's log entry (`_delta_log/
    N.json`, written after the batch's data files: the moment the rows became readable). Files a
    compaction rewrote (`dataChange` false) are not new rows and are left out. `update` reads only
    the entries that appeared since the last call (an entry appears whole: the sink creates it
    under its final name in one step)."""

    def __init__(self, table: str):
        self.log_dir = os.path.join(table, "_delta_log")
        self.read: set[str] = set()
        self.ranges: dict[str, list[tuple[int, int, int, int]]] = collections.defaultdict(list)
        self.rows = 0

    def update(self) -> None:
        names = os.listdir(self.log_dir) if os.path.isdir(self.log_dir) else []
        for name in names:
            if name in self.read or not re.fullmatch(r"\d{20}\.json", name):
                continue
            self.read.add(name)
            path = os.path.join(self.log_dir, name)
            at_us = os.stat(path).st_mtime_ns // 1000
            with open(path) as f:
                for line in f:
                    add = json.loads(line).get("add")
                    if not add or not add.get("dataChange") or not add.get("stats"):
                        continue
                    stats = json.loads(add["stats"])
                    self.rows += stats["numRecords"]
                    self.ranges[add["partitionValues"]["symbol"]].append(
                        (stats["minValues"]["trade_id"], stats["maxValues"]["trade_id"], stats["numRecords"], at_us))

    def written_at(self, sent: dict) -> dict:
        """When each sent trade (`(symbol, trade_id)`) became readable (µs), for those the table
        holds. A trade is placed by its commit's file statistics: within one symbol, the files'
        trade_id ranges must not overlap, or the rows could not be told apart (an error rather
        than a guess)."""
        for symbol, spans in self.ranges.items():
            spans.sort()
            for (_, hi, _, _), (lo, _, _, _) in zip(spans, spans[1:]):
                if lo <= hi:
                    raise SystemExit(f"{self.log_dir}: files of {symbol} overlap in trade_id ({lo} <= {hi}): "
                                     "the commit of each row cannot be told from the log")
        written = {}
        for (symbol, trade_id) in sent:
            spans = self.ranges.get(symbol, [])
            i = bisect.bisect_right(spans, (trade_id, float("inf"))) - 1
            if i >= 0 and spans[i][0] <= trade_id <= spans[i][1]:
                written[(symbol, trade_id)] = spans[i][3]
        return written


def drain_and_stop(args, table: str, rows: int, stop: str, proc, out: str, delta: DeltaLog | None = None) -> dict:
    """Waits (at most --live-drain-timeout) until `table` (or, with `delta`, that Delta table)
    holds `rows` rows, stops the live engine through its stop file, and returns what measured.py
    recorded of the run."""
    deadline = time.monotonic() + args.live_drain_timeout
    with cql.Session.connect(args.cassandra) as s:
        while True:
            if delta:
                delta.update()
                n = delta.rows
            else:
                n = s.execute(f"SELECT COUNT(*) FROM {args.keyspace}.{table}")[0][0]
            if n >= rows or time.monotonic() > deadline:
                break
            time.sleep(1)
    open(stop, "w").close()
    proc.wait()
    with open(out) as f:
        return json.load(f)

def wait_until_ready(args, proc, run_dir: str, name: str) -> None:
    """Waits for a live engine to be ready (coinstream has joined the group when it logs its
    assignment; Spark when its query started), then a few seconds more for the first (empty)
    batches to be planned."""
    ready_re = re.compile(r"BENCH_STARTED|assign|Kafka source|partitions", re.I)
    t0 = time.monotonic()
    ready = False
    while time.monotonic() - t0 < 120 and proc.poll() is None:
        try:
            with open(os.path.join(run_dir, "output.log")) as f:
                if ready_re.search(f.read()):
                    ready = True
                    break
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    if proc.poll() is not None:
        raise SystemExit(f"{name}: the engine exited before the live phase; see {run_dir}/output.log")
    time.sleep(args.live_settle if ready else 10)

def measured(cmd: list[str], run_dir: str, marker: str, stop_file: str | None = None, timeout: float = 3600):
    out = os.path.join(run_dir, "measure.json")
    wrapper = [sys.executable, os.path.join(BENCH, "measure.py"), "--out", out, "--log",
               os.path.join(run_dir, "output.log"), "--marker", marker, "--timeout", str(timeout)]
    if stop_file:
        wrapper += ["--stop-file", stop_file]
    proc = subprocess.Popen(wrapper + ["--", *cmd])
    RUNNING.append(proc)
    return proc, out


RUNNING: list[subprocess.Popen] = []


def measured_run(args, name: str, cmd: list[str], run_dir: str, marker: str) -> dict:
    """Runs `cmd` to its end through `measured` and returns its measurements, plus the load
    average before it (`load_before`), every core's busy CPU seconds over it (`busy_s`) and how
    many cores that kept busy on average (`machine_busy_cores`)."""
    busy0, total0 = cpu_jiffies()
    load = loadavg()
    log(f"{name}: {' '.join(cmd)}")
    proc, out = measured(cmd, run_dir, marker, timeout=args.run_timeout)
    proc.wait()
    busy1, total1 = cpu_jiffies()
    with open(out) as f:
        m = json.load(f)
    m["load_before"] = load
    m["busy_s"] = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
    m["machine_busy_cores"] = round((busy1 - busy0) / max(1, total1 - total0) * os.cpu_count(), 2)
    return m


def failed(name: str, m: dict, result: dict, run_dir: str) -> bool:
    """Whether the measured run `m` exited non-zero; if so, the end of its output goes to stderr
    and `result` gets its `error`."""
    if m["exit_code"] == 0:
        return False
    log(f"{name}: exit code {m['exit_code']}; see {result['log']}")
    with open(os.path.join(run_dir, "output.log")) as f:
        sys.stderr.write("".join(f.readlines()[-30:]))
    result["error"] = f"exit code {m['exit_code']}"
    return True


def stop_running() -> None:
    """Stops engines still running (after an error): measure.py passes the TERM on to the tree."""
    for p in RUNNING:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()


# --- Cassandra checks -----------------------------------------------------------------------------


def expected_from_records(path: str, portfolio: dict) -> tuple[dict, dict]:
    """Per (symbol, trade_date) row counts of the portfolio trades, and (symbol, trade_id) -> price."""
    counts: dict = collections.Counter()
    prices = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r["symbol"] in portfolio:
                counts[(r["symbol"], r["trade_time"][:10])] += 1
                prices[(r["symbol"], r["trade_id"])] = r["price"]
    return dict(counts), prices


def check_table(session: cql.Session, ks: str, table: str, partitions: dict, sample: int) -> dict:
    """Rows per partition (against the expected counts) and the first `sample` rows of each."""
    total, wrong, rows = 0, [], {}
    for (symbol, date), want in sorted(partitions.items()):
        where = f"WHERE symbol = {cql.quote_text(symbol)} AND trade_date = '{date}'"
        got = session.execute(f"SELECT COUNT(*) FROM {ks}.{table} {where}")[0][0]
        total += got
        if got != want:
            wrong.append(f"{symbol} {date}: {got} rows, expected {want}")
        for trade_id, price, profit in session.execute(
            f"SELECT trade_id, price, profit FROM {ks}.{table} {where} LIMIT {sample}"
        ):
            rows[(symbol, trade_id)] = (price, profit)
    return {"rows": total, "partition_mismatches": wrong, "sample": rows}


def verify_profits(sample: dict, prices: dict, portfolio: dict) -> list[str]:
    """Every sampled row against an independent exact computation from the generated record."""
    problems = []
    for (symbol, trade_id), (price, profit) in sample.items():
        h = portfolio[symbol]
        want = (decimal.Decimal(prices[(symbol, trade_id)]) - decimal.Decimal(h["buy_price"])) * decimal.Decimal(h["size"])
        if profit is None or profit.compare(want) != 0 or price.compare(decimal.Decimal(prices[(symbol, trade_id)])) != 0:
            problems.append(f"{symbol} {trade_id}: profit {profit}, expected {want}")
    return problems


# --- one run --------------------------------------------------------------------------------------


def generate_command(args, count: int, seed: int, rate, start: str) -> list:
    """`coinstream generate` of `count` shipped-portfolio trades from `seed`, `rate` a second of
    trade time from `start`; the caller adds where they go."""
    return [args.coinstream_bin, "generate", "--count", str(count), "--seed", str(seed), "--start", start,
            "--rate", str(rate),
            "--portfolio", os.path.join(REPO, "required_data/my_Portfolio.json"),
            "--coin-map", os.path.join(REPO, "required_data/coin_map.json")]


def fresh_table(args, table: str, ddl: str) -> None:
    """Drops `table` of the bench keyspace and creates it again empty from `ddl` (a format of
    `ks` and `table`)."""
    with cql.Session.connect(args.cassandra) as s:
        s.execute(f"DROP TABLE IF EXISTS {args.keyspace}.{table}")
        s.execute(ddl.format(ks=args.keyspace, table=table))


def fresh_run_dir(args, name: str) -> str:
    """The run folder `name` under the work folder, emptied of an earlier run's files."""
    run_dir = os.path.join(args.work, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    return run_dir


def batch_figures(m: dict, coinstream: bool, after_first_key: str) -> dict:
    """From measure.py's record `m` of an available-now run whose marker lines are coinstream's
    progress records or Spark's BENCH_BATCH lines: when the first batch with rows was written (s
    after start), the batches, and (under `after_first_key`) the input rows per second once the
    first batch was done, start-up and warm-up (JIT) left out."""
    # (end time since start, input rows) of each batch with rows.
    if coinstream:
        batches = [(t, json.loads(line[line.find("{"):])["numInputRows"]) for t, line in m["markers"]]
        cpu_at_first = m["cpu_at_first_marker_s"]
    else:
        # Spark prints its batches' end times (from its progress records) when the query ended.
        batches = sorted((float(line.split()[3]) - m["start_unix"], int(line.split()[2])) for _, line in m["markers"])
        cpu_at_first = None
    out = {"first_batch_s": round(batches[0][0], 3) if batches else None, "cpu_at_first_batch_s": cpu_at_first,
           "batches": len(batches)}
    if len(batches) >= 2:
        out["last_batch_s"] = round(batches[-1][0], 3)
        later = sum(n for _, n in batches[1:])
        span = batches[-1][0] - batches[0][0]
        out[after_first_key] = round(later / span, 1) if span > 0 else None
    return out


def run_engine(args, engine: str, sink: str, topic: str, expected_rows: int, partitions, prices, portfolio) -> dict:
    name = f"{engine}-{sink}"
    run_dir = fresh_run_dir(args, name)
    table = f"{engine}_{sink}"
    if sink == "cassandra":
        fresh_table(args, table, TABLE_DDL)
    cmd, marker = engine_command(args, engine, topic=topic, table=table, sink=sink, run_dir=run_dir, live=False)
    services = service_pids()
    before = {k: proc_cpu_s(p) for k, p in services.items()}
    m = measured_run(args, name, cmd, run_dir, marker)
    other_s = m["busy_s"] - m["cpu_s"] - sum(proc_cpu_s(p) - before[k] for k, p in services.items())
    result = {
        "engine": engine,
        "sink": sink,
        "load_before": m["load_before"],
        "other_cpu_s": round(max(0.0, other_s), 1),
        "wall_s": m["wall_s"],
        "cpu_s": m["cpu_s"],
        "cpu_rusage_s": m["cpu_rusage_s"],
        "cpu_sampled_s": m["cpu_sampled_s"],
        "user_s": m["user_s"],
        "sys_s": m["sys_s"],
        "peak_rss_mb": m["peak_rss_mb"],
        "exit_code": m["exit_code"],
        "start_unix": m["start_unix"],
        "machine_busy_cores": m["machine_busy_cores"],
        "service_cpu_s": {k: round(proc_cpu_s(p) - before[k], 1) for k, p in services.items()},
        "trades": args.trades,
        "log": os.path.relpath(os.path.join(run_dir, "output.log"), REPO),
    }
    result.update(batch_figures(m, is_coinstream(engine), "trades_per_s_after_first_batch"))
    result["trades_per_s"] = round(args.trades / m["wall_s"], 1)
    if failed(name, m, result, run_dir):
        return result
    if is_coinstream(engine):
        rows_out = 0
        with open(os.path.join(run_dir, "output.log")) as f:
            for line in f:
                j = line.find("{")
                if '"numInputRows"' in line and j >= 0:
                    rows_out += json.loads(line[j:])["sink"]["numOutputRows"]
        result["rows_reported"] = rows_out
    if sink == "cassandra":
        with cql.Session.connect(args.cassandra) as s:
            check = check_table(s, args.keyspace, table, partitions, args.sample)
            if not args.keep:
                s.execute(f"DROP TABLE IF EXISTS {args.keyspace}.{table}")
        result["rows_in_cassandra"] = check["rows"]
        result["rows_expected"] = expected_rows
        result["partition_mismatches"] = check["partition_mismatches"]
        result["profit_problems"] = verify_profits(check["sample"], prices, portfolio)
        result["sampled_rows"] = len(check["sample"])
        result["_sample"] = check["sample"]
        result["rows_per_s"] = round(check["rows"] / m["wall_s"], 1)
    log(
        f"{name}: {m['wall_s']:.1f} s wall, {result['trades_per_s']:.0f} trades/s, first batch at "
        f"{result['first_batch_s']}, {m['cpu_s']:.1f} CPU s, peak RSS {m['peak_rss_mb']:.0f} MB"
        + (f", {result['rows_in_cassandra']} rows in Cassandra (expected {expected_rows})" if sink == "cassandra" else "")
    )
    return result


def run_live(args, engine: str, kafka: Kafka, index: int, portfolio, trigger: str | None = None,
             store: str = "cassandra") -> dict:
    """Trades produced live at a fixed rate while the engine runs; latency from send to WRITETIME
    (`store` "cassandra"), or to the commit that made the row readable in coinstream's embedded
    store (`store` "delta": the shipped Delta sink, on disk)."""
    name = f"{engine}-live" + (f"-{trigger.split(':')[-1]}" if trigger else "") + ("-delta" if store == "delta" else "")
    run_dir = fresh_run_dir(args, name)
    topic = f"{args.prefix}_live_{index}_{engine}"
    table = f"{engine}_live_{index}"
    kafka.create_input(topic, args.partitions)
    total_s = args.live_warmup + args.live_seconds
    count = int(args.live_rate * total_s)
    records = os.path.join(run_dir, "records.jsonl")
    start = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    sh(generate_command(args, count, 1000 + index, args.live_rate, start) + ["--format", "record", "--out", records])
    delta = DeltaLog(os.path.join(run_dir, "profit")) if store == "delta" else None
    if not delta:
        fresh_table(args, table, TABLE_DDL)
    cmd, marker = engine_command(args, engine, topic=topic, table=table, sink=store, run_dir=run_dir, live=True,
                                 trigger=trigger)
    stop = os.path.join(run_dir, "STOP")
    log(f"{name}: {' '.join(cmd)}")
    proc, out = measured(cmd, run_dir, marker + "|BENCH_STARTED", stop_file=stop if is_coinstream(engine) else None,
                         timeout=args.run_timeout)
    wait_until_ready(args, proc, run_dir, name)
    sent_log = os.path.join(run_dir, "sent.csv")
    kafka_cp = os.path.join(args.kafka_jars, "*")
    services = service_pids()
    before = {k: proc_cpu_s(p) for k, p in services.items()}
    busy0, total0 = cpu_jiffies()
    producer = subprocess.run(
        [JAVA17, "-cp", kafka_cp, os.path.join(BENCH, "PacedProducer.java"), args.brokers, topic, records,
         str(args.live_rate), str(total_s), sent_log],
        text=True, capture_output=True,
    )
    busy1, total1 = cpu_jiffies()
    service_cpu = {k: round(proc_cpu_s(p) - before[k], 1) for k, p in services.items()}
    if producer.returncode != 0:
        raise SystemExit(f"paced producer failed: {producer.stderr[-2000:]}")
    log(f"{name}: {producer.stderr.strip().splitlines()[-1]}")
    sent = {}
    first_send = None
    with open(sent_log) as f:
        for line in f:
            symbol, trade_id, us = line.rstrip().split(",")
            us = int(us)
            first_send = us if first_send is None else min(first_send, us)
            if symbol in portfolio:
                sent[(symbol, int(trade_id))] = us
    # Wait (bounded) until every portfolio trade is in the store, then stop the engine.
    m = drain_and_stop(args, table, len(sent), stop, proc, out, delta)
    if delta:
        delta.update()
        rows_written = delta.rows
        rows = [(symbol, trade_id, us) for (symbol, trade_id), us in delta.written_at(sent).items()]
    else:
        with cql.Session.connect(args.cassandra) as s:
            rows = s.execute(f"SELECT symbol, trade_id, WRITETIME(profit) FROM {args.keyspace}.{table}")
            if not args.keep:
                s.execute(f"DROP TABLE IF EXISTS {args.keyspace}.{table}")
        rows_written = len(rows)
    warm_until = first_send + int(args.live_warmup * 1e6)
    lat_ms = []
    timed = []  # (latency ms, sent µs, written µs)
    for symbol, trade_id, written_us in rows:
        us = sent.get((symbol, trade_id))
        if us is not None and us >= warm_until:
            lat_ms.append((written_us - us) / 1000.0)
            timed.append((lat_ms[-1], us, written_us))
    measured_sent = sum(1 for us in sent.values() if us >= warm_until)
    lat_ms.sort()
    result = {
        "engine": engine,
        "rate": args.live_rate,
        "seconds": args.live_seconds,
        "warmup_s": args.live_warmup,
        "trigger": trigger or "default (micro-batches back to back)",
        "store": store,
        "rows_sent": len(sent),
        "rows_written": rows_written,
        "rows_measured": len(lat_ms),
        "rows_expected_measured": measured_sent,
        "machine_busy_cores": round((busy1 - busy0) / max(1, total1 - total0) * os.cpu_count(), 2),
        "engine_cpu_s": m["cpu_s"],
        "service_cpu_s_while_producing": service_cpu,
        "engine_wall_s": m["wall_s"],
        "peak_rss_mb": m["peak_rss_mb"],
        "exit_code": m["exit_code"],
    }
    if lat_ms:
        q = statistics.quantiles(lat_ms, n=100, method="inclusive") if len(lat_ms) > 1 else [lat_ms[0]] * 99
        result.update(p50_ms=round(q[49], 1), p99_ms=round(q[98], 1), max_ms=round(lat_ms[-1], 1),
                      min_ms=round(lat_ms[0], 1), mean_ms=round(statistics.fmean(lat_ms), 1))
        if is_coinstream(engine):
            result["tail"] = tail_attribution(timed, os.path.join(run_dir, "output.log"))
    log(f"{name}: {result}")
    kafka.delete_topic(topic)
    kafka.delete_topic(f"{topic}_dlq")
    return result


SLOW_BATCH_MS = 25  # the live p99 target: a batch longer than this holds rows past it


def tail_attribution(timed: list[tuple[float, int, int]], output_log: str) -> dict | None:
    """Where coinstream's slowest 1% of live rows spent their time, from its progress records:
    waiting for the micro-batch that took them to start polling, or inside that batch (poll,
    decode, query, write); and which stage was longest in each batch that took over
    SLOW_BATCH_MS. `timed` holds (latency ms, sent µs, written µs) per measured row. A batch
    starts polling `getBatch` ms before its progress record's timestamp (taken once the poll
    returned); all three clocks are this machine's wall clock."""
    batches = []
    with open(output_log) as f:
        for line in f:
            i = line.find('{"batchId"')
            if i < 0:
                continue
            b = json.loads(line[i:])
            at = dt.datetime.fromisoformat(b["timestamp"].replace("Z", "+00:00")).timestamp() * 1e6
            batches.append((at - b["durationMs"]["getBatch"] * 1000, b))
    if not batches or not timed:
        return None
    batches.sort(key=lambda x: x[0])
    starts = [t for t, _ in batches]
    slow = sorted(timed)[-max(1, len(timed) // 100):]
    waited, inside = [], []
    for _, sent_us, written_us in slow:
        i = bisect.bisect_right(starts, written_us) - 1
        if i < 0:
            continue
        waited.append(max(0.0, (starts[i] - sent_us) / 1000))
        inside.append((written_us - starts[i]) / 1000)
    stages = ("getBatch", "walCommit", "decode", "query", "sink", "commit")
    by_stage: dict[str, int] = {}
    longest = max((b for _, b in batches), key=lambda b: b["durationMs"]["total"])
    for _, b in batches:
        d = b["durationMs"]
        if d["total"] > SLOW_BATCH_MS:
            top = max(stages, key=lambda k: d.get(k, 0))
            by_stage[top] = by_stage.get(top, 0) + 1
    return {
        "slow_rows": len(waited),
        "waited_for_batch_ms": round(statistics.fmean(waited), 1) if waited else None,
        "in_batch_ms": round(statistics.fmean(inside), 1) if inside else None,
        "batches": len(batches),
        "batches_over_25ms": sum(by_stage.values()),
        "over_25ms_by_longest_stage": dict(sorted(by_stage.items(), key=lambda kv: -kv[1])),
        "longest_batch_ms": {k: longest["durationMs"].get(k) for k in (*stages, "total")},
    }


# --- OHLCV: 1-minute candles, a stateful window aggregation -----------------------------------------

OHLCV_ENGINES = {
    "coinstream": "coinstream (sql/ohlcv_1m.sql)",
    "spark": "Spark (withWatermark + groupBy(window))",
}

# The table coinstream's Cassandra sink creates for sql/ohlcv_1m.sql's output.
OHLCV_DDL = (
    "CREATE TABLE IF NOT EXISTS {ks}.{table} (symbol text, window_start timestamp, window_end timestamp, "
    "open decimal, high decimal, low decimal, close decimal, volume decimal, trade_count bigint, "
    "PRIMARY KEY ((symbol), window_start))"
)
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume", "trade_count")
WINDOW_US = 60_000_000  # the tumbling window: 1 minute
DELAY_US = 10_000_000  # the watermark's delay: 10 s


def ohlcv_command(args, engine: str, *, topic: str, table: str, run_dir: str, live: bool,
                  trigger: str | None = None) -> tuple[list[str], str]:
    """The command line of one OHLCV run and the regex of its "a batch was done" lines."""
    if engine == "coinstream":
        # pipelines/ohlcv-cassandra.toml as shipped (its batch size, watermark, transform, sink keys
        # and [state] table, which lands in the run's keyspace), on the run's own topic and table.
        overrides = run_overrides(args, topic=topic, group=f"{args.prefix}_{os.path.basename(run_dir)}",
                                  table=table, checkpoint=os.path.join(run_dir, "checkpoint"))
        cmd = [args.coinstream_bin, "run", *shipped_pipeline(OHLCV_PIPELINE, overrides), "--trigger",
               trigger if live else "available-now", "--progress", "json"]
        return cmd, r'"numInputRows":[1-9]'
    return spark_job(args, "ohlcv", sink="cassandra", topic=topic, table=table, run_dir=run_dir, live=live, extra=[])


def time_us(text: str) -> int:
    """µs since the epoch of a bus record's RFC 3339 UTC time ("2026-11-20T00:00:00.040630Z")."""
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


def candles_from_records(path: str, keys: set | None = None) -> tuple[dict, int, dict]:
    """An independent recomputation of sql/ohlcv_1m.sql from the generated records (only those
    whose (symbol, trade_id) is in `keys`, if given): the candles the final watermark closes
    (window end <= largest trade time - 10 s, the rule of both engines), keyed by (symbol,
    window start in ms), each (window end in ms, open, high, low, close, volume, trade_count);
    the largest trade time (µs); and each record's trade time by (symbol, trade_id)."""
    groups: dict = {}
    times = {}
    max_us = None
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            key = (r["symbol"], r["trade_id"])
            if keys is not None and key not in keys:
                continue
            t = time_us(r["trade_time"])
            times[key] = t
            max_us = t if max_us is None else max(max_us, t)
            price, size = decimal.Decimal(r["price"]), decimal.Decimal(r["size"])
            start = t - t % WINDOW_US
            g = groups.get((r["symbol"], start))
            order = (t, r["trade_id"])
            if g is None:
                groups[(r["symbol"], start)] = [order, price, price, price, order, price, size, 1]
                continue
            if order < g[0]:
                g[0], g[1] = order, price
            g[2] = max(g[2], price)
            g[3] = min(g[3], price)
            if order > g[4]:
                g[4], g[5] = order, price
            g[6] += size
            g[7] += 1
    closed = {}
    if max_us is not None:
        for (symbol, start), g in groups.items():
            if start + WINDOW_US <= max_us - DELAY_US:
                closed[(symbol, start // 1000)] = ((start + WINDOW_US) // 1000, g[1], g[2], g[3], g[5], g[6], g[7])
    return closed, max_us, times


def read_candles(session: cql.Session, ks: str, table: str) -> dict:
    """Every candle of a table, keyed as candles_from_records's, each (window end in ms, open,
    high, low, close, volume, trade_count, WRITETIME(close) in µs)."""
    def ms(t: dt.datetime) -> int:
        return (t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)

    rows = session.execute(
        f"SELECT symbol, window_start, window_end, open, high, low, close, volume, trade_count, WRITETIME(close) "
        f"FROM {ks}.{table}"
    )
    return {(r[0], ms(r[1])): (ms(r[2]), *r[3:]) for r in rows}


def compare_candles(got: dict, want: dict, what: str) -> list[str]:
    """Differences between two sets of candles (values compared as exact numbers; the write time
    that `got` may carry is ignored)."""
    def name(key) -> str:
        return f"{key[0]} {dt.datetime.fromtimestamp(key[1] / 1000, dt.timezone.utc):%Y-%m-%d %H:%M}"

    def values(v) -> str:
        return ", ".join(str(x) for x in v[:7])

    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [k for k in sorted(set(got) & set(want)) if tuple(got[k][:7]) != tuple(want[k][:7])]
    problems = []
    if missing:
        problems.append(f"{what}: {len(missing)} candles missing (" + ", ".join(map(name, missing[:3])) + ", ...)")
    if extra:
        problems.append(f"{what}: {len(extra)} unexpected candles (" + ", ".join(map(name, extra[:3])) + ", ...)")
    if wrong:
        problems.append(f"{what}: {len(wrong)} candles differ, e.g. {name(wrong[0])}: (end ms, open, high, low, close, "
                        f"volume, count) = ({values(got[wrong[0]])}), expected ({values(want[wrong[0]])})")
    return problems


def state_counts(engine: str, log_path: str) -> dict:
    """From an engine's output: rows its watermark dropped as late and its last watermark; for
    coinstream also the rows its sink reported."""
    dropped, written, watermark = 0, 0, None
    with open(log_path) as f:
        for line in f:
            if engine == "coinstream" and '"numInputRows"' in line and "{" in line:
                p = json.loads(line[line.find("{"):])
                written += p["sink"]["numOutputRows"]
                dropped += sum(op.get("numRowsDroppedByWatermark", 0) for op in p.get("stateOperators", []))
                watermark = p.get("eventTime", {}).get("watermark", watermark)
            elif engine == "spark" and "BENCH_STATE " in line:
                s = json.loads(line[line.find("BENCH_STATE ") + len("BENCH_STATE "):])
                dropped, watermark = s["dropped_by_watermark"], s["last_watermark"]
    out = {"rows_dropped_by_watermark": dropped, "last_watermark": watermark}
    if engine == "coinstream":
        out["rows_reported"] = written
    return out


def run_ohlcv(args, engine: str, topic: str, expected: dict) -> dict:
    """One engine drains the trade topic (available-now) into a fresh OHLCV table; its candles
    against the recomputation. The candles themselves are kept under "_candles" for the
    cross-engine check."""
    name = f"ohlcv-{engine}"
    run_dir = fresh_run_dir(args, name)
    table = f"ohlcv_{engine}"
    fresh_table(args, table, OHLCV_DDL)
    cmd, marker = ohlcv_command(args, engine, topic=topic, table=table, run_dir=run_dir, live=False)
    services = service_pids()
    before = {k: proc_cpu_s(p) for k, p in services.items()}
    load = loadavg()
    log(f"{name}: {' '.join(cmd)}")
    proc, out = measured(cmd, run_dir, marker, timeout=args.run_timeout)
    proc.wait()
    with open(out) as f:
        m = json.load(f)
    result = {
        "engine": engine,
        "load_before": load,
        "wall_s": m["wall_s"],
        "trades_per_s": round(args.trades / m["wall_s"], 1),
        "cpu_s": m["cpu_s"],
        "peak_rss_mb": m["peak_rss_mb"],
        "exit_code": m["exit_code"],
        "batches": len(m["markers"]),
        "service_cpu_s": {k: round(proc_cpu_s(p) - before[k], 1) for k, p in services.items()},
        "trades": args.trades,
        "candles_expected": len(expected),
        "log": os.path.relpath(os.path.join(run_dir, "output.log"), REPO),
    }
    if failed(name, m, result, run_dir):
        return result
    result.update(state_counts(engine, os.path.join(run_dir, "output.log")))
    with cql.Session.connect(args.cassandra) as s:
        got = read_candles(s, args.keyspace, table)
        if not args.keep:
            s.execute(f"DROP TABLE IF EXISTS {args.keyspace}.{table}")
    result["candles_in_cassandra"] = len(got)
    result["problems"] = compare_candles(got, expected, f"{OHLCV_ENGINES[engine]} vs the recomputation")
    result["_candles"] = got
    log(f"{name}: {m['wall_s']:.1f} s wall, {result['trades_per_s']:.0f} trades/s, {m['cpu_s']:.1f} CPU s, "
        f"peak RSS {m['peak_rss_mb']:.0f} MB, {len(got)} candles (expected {len(expected)}), "
        f"{result['rows_dropped_by_watermark']} rows late, problems: {result['problems'] or 'none'}")
    return result


def run_ohlcv_live(args, engine: str, kafka: Kafka, index: int) -> dict:
    """Trades produced live at a fixed rate while the engine runs; per candle, the latency from the
    moment the watermark passed its window's end (the send of the first trade at least 10 s past
    the end) to WRITETIME(close) in Cassandra."""
    name = f"ohlcv-{engine}-live"
    run_dir = fresh_run_dir(args, name)
    topic = f"{args.prefix}_ohlcv_live_{index}_{engine}"
    table = f"ohlcv_{engine}_live"
    kafka.create_input(topic, args.partitions)
    count = int(args.ohlcv_live_rate * args.ohlcv_live_seconds)
    records = os.path.join(run_dir, "records.jsonl")
    # Trade times advance as the sends do (--rate = the send rate), from 15 s before a minute's
    # end: the watermark passes that minute's end 25 s into the sends, the next minute's 85 s in
    # (so 90 s of sends close two windows per product).
    minute = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    start = (minute + dt.timedelta(seconds=45)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    sh(generate_command(args, count, 2000 + index, args.ohlcv_live_rate, start)
       + ["--format", "record", "--out", records])
    fresh_table(args, table, OHLCV_DDL)
    trigger = args.ohlcv_live_trigger if engine == "coinstream" else None
    cmd, marker = ohlcv_command(args, engine, topic=topic, table=table, run_dir=run_dir, live=True, trigger=trigger)
    stop = os.path.join(run_dir, "STOP")
    log(f"{name}: {' '.join(cmd)}")
    proc, out = measured(cmd, run_dir, marker + "|BENCH_STARTED", stop_file=stop if engine == "coinstream" else None,
                         timeout=args.run_timeout)
    wait_until_ready(args, proc, run_dir, name)
    sent_log = os.path.join(run_dir, "sent.csv")
    producer = subprocess.run(
        [JAVA17, "-cp", os.path.join(args.kafka_jars, "*"), os.path.join(BENCH, "PacedProducer.java"), args.brokers,
         topic, records, str(args.ohlcv_live_rate), str(args.ohlcv_live_seconds), sent_log],
        text=True, capture_output=True,
    )
    if producer.returncode != 0:
        open(stop, "w").close()
        raise SystemExit(f"paced producer failed: {producer.stderr[-2000:]}")
    log(f"{name}: {producer.stderr.strip().splitlines()[-1]}")
    sends = []  # (send µs, symbol, trade_id), in send order
    with open(sent_log) as f:
        for line in f:
            symbol, trade_id, us = line.rstrip().split(",")
            sends.append((int(us), symbol, int(trade_id)))
    sends.sort()
    expected, _, times = candles_from_records(records, {(s, t) for _, s, t in sends})
    # When the watermark passed each window's end: the first send of a trade whose time is at
    # least the end + the delay (the watermark is the largest trade time seen - the delay).
    closes = sorted({end for end, *_ in expected.values()})
    closed_at = {}
    i = 0
    for us, symbol, trade_id in sends:
        t = times[(symbol, trade_id)]
        while i < len(closes) and t >= closes[i] * 1000 + DELAY_US:
            closed_at[closes[i]] = us
            i += 1
    m = drain_and_stop(args, table, len(expected), stop, proc, out)
    with cql.Session.connect(args.cassandra) as s:
        got = read_candles(s, args.keyspace, table)
        if not args.keep:
            s.execute(f"DROP TABLE IF EXISTS {args.keyspace}.{table}")
    lat_ms = sorted((got[k][7] - closed_at[v[0]]) / 1000.0 for k, v in expected.items() if k in got)
    result = {
        "engine": engine,
        "rate": args.ohlcv_live_rate,
        "seconds": args.ohlcv_live_seconds,
        "trigger": trigger or "default (micro-batches back to back)",
        "trades_sent": len(sends),
        "windows_closed": len(closes),
        "candles_expected": len(expected),
        "candles_written": len(got),
        "candles_measured": len(lat_ms),
        "problems": compare_candles(got, expected, f"{OHLCV_ENGINES[engine]} live vs the recomputation"),
        "engine_cpu_s": m["cpu_s"],
        "engine_wall_s": m["wall_s"],
        "peak_rss_mb": m["peak_rss_mb"],
        "exit_code": m["exit_code"],
        "log": os.path.relpath(os.path.join(run_dir, "output.log"), REPO),
    }
    if lat_ms:
        result.update(p50_ms=round(statistics.median(lat_ms), 1), max_ms=round(lat_ms[-1], 1),
                      min_ms=round(lat_ms[0], 1))
    log(f"{name}: {result}")
    kafka.delete_topic(topic)
    kafka.delete_topic(f"{topic}_dlq")
    return result


def ohlcv_phase(args, kafka: Kafka, topic: str, records: str) -> dict:
    """Both engines on the trade topic, then live; the candles checked against the recomputation
    and across engines."""
    expected, max_us, _ = candles_from_records(records)
    log(f"ohlcv: {len(expected):,} closed candles expected (largest trade time "
        f"{dt.datetime.fromtimestamp(max_us / 1e6, dt.timezone.utc):%Y-%m-%d %H:%M:%S})")
    engines = [e for e in args.ohlcv_engines.split(",") if e]
    runs = []
    for engine in engines:
        runs.append(run_ohlcv(args, engine, topic, expected))
        time.sleep(args.pause)
    candles = {r["engine"]: r.pop("_candles") for r in runs if "_candles" in r}
    across = None
    if len(candles) > 1:
        # Spark's table as the reference of the other's, when it ran.
        (a, ca), (b, cb) = sorted(candles.items(), key=lambda kv: kv[0] != "spark")[:2]
        diff = compare_candles(cb, ca, f"{OHLCV_ENGINES[b]} against {OHLCV_ENGINES[a]}")
        across = (f"the {len(ca):,} candles are identical in both engines' tables" if not diff else "; ".join(diff))
    live = []
    if args.ohlcv_live_seconds > 0:
        for i, engine in enumerate(engines):
            live.append(run_ohlcv_live(args, engine, kafka, i))
            time.sleep(args.pause)
    return {"candles_expected": len(expected), "runs": runs, "live": live, "across_engines": across}


def ohlcv_report(args, ohlcv: dict) -> list[str]:
    ohlcv_file = shipped_settings(OHLCV_PIPELINE)
    lines = ["", "## OHLCV: 1-minute candles (stateful window aggregation)", "",
             f"sql/ohlcv_1m.sql in coinstream and `withWatermark(\"trade_time\", \"10 seconds\")` + "
             f"`groupBy(symbol, window(trade_time, \"1 minute\"))` in Spark (bench/spark/job.py --variant ohlcv), "
             f"append mode, into Cassandra `PRIMARY KEY ((symbol), window_start)`. Each engine drains the same "
             f"topic ({args.trades:,} trades, all products) available-now into a fresh table; "
             f"{ohlcv['candles_expected']:,} candles are closed by the final watermark.", "",
             "| engine | wall s | trades/s | CPU s (user+sys) | peak RSS MB | candles | late rows | check |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in ohlcv["runs"]:
        check = r.get("error") or ("OK" if not r.get("problems") else "MISMATCH")
        lines.append(f"| {OHLCV_ENGINES[r['engine']]} | {fmt(r['wall_s'])} | {fmt(r['trades_per_s'], 0)} "
                     f"| {fmt(r['cpu_s'])} | {fmt(r['peak_rss_mb'], 0)} | {fmt(r.get('candles_in_cassandra'))} "
                     f"| {fmt(r.get('rows_dropped_by_watermark'))} | {check} |")
    lines += [""]
    for r in ohlcv["runs"]:
        if r.get("problems"):
            lines.append(f"- {OHLCV_ENGINES[r['engine']]}: " + "; ".join(r["problems"])[:1500])
        elif not r.get("error"):
            lines.append(f"- {OHLCV_ENGINES[r['engine']]}: all {fmt(r['candles_expected'])} candles equal an exact "
                         "recomputation from the generated records, none more")
    if ohlcv["across_engines"]:
        lines.append(f"- Across engines: {ohlcv['across_engines'][:1500]}")
    if ohlcv["live"]:
        lines += ["", f"Live: {args.ohlcv_live_rate:,.0f} trades/s for {args.ohlcv_live_seconds:.0f} s "
                  "(`bench/PacedProducer.java`, trade times advancing with the sends), each engine running "
                  "continuously. Latency per candle: Cassandra `WRITETIME(close)` − the moment the watermark "
                  "passed the window's end (the send of the first trade 10 s or more past it).", "",
                  "| engine | trigger | candles measured | median ms | max ms | CPU s (whole run) | peak RSS MB | check |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in ohlcv["live"]:
            check = "OK" if not r["problems"] else "; ".join(r["problems"])[:500]
            lines.append(f"| {OHLCV_ENGINES[r['engine']]} | {r['trigger']} | {fmt(r['candles_measured'])} of "
                         f"{fmt(r['candles_expected'])} | {fmt(r.get('p50_ms'))} | {fmt(r.get('max_ms'))} "
                         f"| {fmt(r['engine_cpu_s'])} | {fmt(r['peak_rss_mb'], 0)} | {check} |")
    lines += ["", "How: wall, CPU and peak RSS as for the profit runs (below); trades/s = trades read ÷ wall, "
              "start-up included. coinstream: `pipelines/ohlcv-cassandra.toml` as shipped (sql/ohlcv_1m.sql, a 10 s "
              f"watermark on trade_time, max {fmt(ohlcv_file['engine']['max_records_per_batch'])} records per "
              f"batch, {ohlcv_file['sink']['consistency'].upper()}, the aggregation state in a "
              f"`[state] type = \"{ohlcv_file['state']['type']}\"` table) with `--set` overrides for the run's "
              "topic, group, keyspace, table, dead-letter topic and checkpoint. "
              f"Spark: `local[2]`, maxOffsetsPerTrigger {args.spark_max_offsets or 'unset'}, `foreachBatch` "
              "append through the connector. Late rows: the engine's own count of rows its watermark dropped "
              "(`numRowsDroppedByWatermark` of its progress). The check compares every candle (window end, open, high, low, close, volume, "
              "trade_count, as exact numbers) with a recomputation in Python from the generated records, and "
              "the engines' tables with each other. Live: the watermark (largest trade time − 10 s) passes "
              "a window's end when the first trade 10 s or more past it is sent; both engines apply a new "
              "watermark from the batch after the one that saw the trade (Spark's rule), with a batch "
              "without records for it when there is nothing new to read."]
    return lines


# --- the embedded job: a Coinbase capture replayed (available-now) ----------------------------------

EMBEDDED_CONFIG = "coinstream.toml"
EMBEDDED_ENGINES = {
    "coinstream": "coinstream (coinstream.toml, Delta sink)",
    "spark": "Spark (file source, SQL join, noop sink)",
}
# Removed from the run's coin map, as in bench/embedded.sh: the capture source dead-letters its
# trades (about 10% of them), Spark's join with the coin map drops them.
MISSING_PRODUCT = "XRP-USD"
TRADES_START = "2026-11-20T00:00:00.000000Z"


def expected_from_capture(path: str, coin_map: dict, portfolio: dict) -> dict:
    """What the embedded job must make of the capture, counted independently of both engines: its
    lines, its trade frames (`match`, `last_match`), those of products outside the coin map, the
    trades coinstream drops as repeats (id not above the product's last; a generated capture has
    none) and the profit rows (the other trades of portfolio products)."""
    lines = frames = unknown = repeats = rows = 0
    last: dict = {}
    with open(path) as f:
        for line in f:
            lines += 1
            m = json.loads(line)
            if m.get("type") not in ("match", "last_match"):
                continue
            frames += 1
            product = m["product_id"]
            if product not in coin_map:
                unknown += 1
            elif m["trade_id"] <= last.get(product, -1):
                repeats += 1
            else:
                last[product] = m["trade_id"]
                rows += product in portfolio
    return {"lines": lines, "trade_frames": frames, "unknown_product": unknown, "repeats": repeats, "rows": rows}


def embedded_counts(engine: str, log_path: str) -> dict:
    """From an engine's output: the rows it wrote and the trades of products outside the coin map
    (coinstream: its dead letters, which a generated capture gives no other cause; Spark: what its
    `observe` counted)."""
    rows = dropped = 0
    with open(log_path) as f:
        for line in f:
            if engine == "coinstream" and '"numInputRows"' in line and "{" in line:
                p = json.loads(line[line.find("{"):])
                rows += p["sink"]["numOutputRows"]
                dropped += p.get("numDeadLetters", 0)
            elif engine == "spark" and "BENCH_ROWS " in line:
                counts = json.loads(line[line.find("BENCH_ROWS ") + len("BENCH_ROWS "):])
                rows, dropped = counts.get("rows", 0), counts.get("unknown_product", 0)
    return {"rows_written": rows, "unknown_product_dropped": dropped}


def run_embedded(args, engine: str, capture: str, coin_map: str, expected: dict, round_no: int) -> dict:
    """One fresh process of `engine` replays the capture available-now; measured as the profit runs."""
    name = f"embedded-{engine}-{round_no}"
    run_dir = fresh_run_dir(args, name)
    if engine == "coinstream":
        # As bench/embedded.sh runs it: the shipped file with only the run's paths changed.
        overrides = {
            "source.path": capture,
            "source.coin_map": coin_map,
            "engine.checkpoint_dir": os.path.join(run_dir, "checkpoint"),
            "sink.path": os.path.join(run_dir, "profit"),
            "dead_letter.path": os.path.join(run_dir, "dead_letters"),
        }
        cmd = [args.coinstream_bin, "run", *config_args(os.path.join(REPO, EMBEDDED_CONFIG), overrides),
               "--trigger", "available-now", "--no-ui", "--progress", "json"]
        marker = r'"numInputRows":[1-9]'
    else:
        cmd = [
            args.spark_python, os.path.join(BENCH, "spark/job.py"), "--variant", "capture", "--sink", "noop",
            "--input", os.path.dirname(capture), "--jars", args.spark_jars,
            "--portfolio", os.path.join(REPO, "required_data/my_Portfolio.json"), "--coin-map", coin_map,
            "--checkpoint", os.path.join(run_dir, "checkpoint"), "--driver-memory", args.spark_driver_memory,
        ]
        marker = r"BENCH_BATCH "
    m = measured_run(args, name, cmd, run_dir, marker)
    frames = args.embedded_frames
    result = {
        "engine": engine,
        "round": round_no,
        "load_before": m["load_before"],
        # The machine's busy CPU during the run that was not the engine's (idle Kafka and
        # Cassandra included): other work on the machine shows here.
        "other_cpu_s": round(max(0.0, m["busy_s"] - m["cpu_s"]), 1),
        "machine_busy_cores": m["machine_busy_cores"],
        "wall_s": m["wall_s"],
        "trade_frames": frames,
        "trade_frames_per_s": round(frames / m["wall_s"], 1),
        "cpu_s": m["cpu_s"],
        "user_s": m["user_s"],
        "sys_s": m["sys_s"],
        "peak_rss_mb": m["peak_rss_mb"],
        "exit_code": m["exit_code"],
        "log": os.path.relpath(os.path.join(run_dir, "output.log"), REPO),
    }
    result.update(batch_figures(m, engine == "coinstream", "trade_frames_per_s_after_first_batch"))
    if failed(name, m, result, run_dir):
        return result
    result.update(embedded_counts(engine, os.path.join(run_dir, "output.log")))
    problems = []
    if result["rows_written"] != expected["rows"]:
        problems.append(f"{fmt(result['rows_written'])} rows written, expected {fmt(expected['rows'])}")
    if result["unknown_product_dropped"] != expected["unknown_product"]:
        problems.append(f"{fmt(result['unknown_product_dropped'])} trades of products outside the coin map "
                        f"dropped, expected {fmt(expected['unknown_product'])}")
    result["problems"] = problems
    if not args.keep:
        shutil.rmtree(os.path.join(run_dir, "profit"), ignore_errors=True)
    log(f"{name}: {m['wall_s']:.1f} s wall, {result['trade_frames_per_s']:.0f} trade frames/s, first batch at "
        f"{result['first_batch_s']}, {m['cpu_s']:.1f} CPU s, peak RSS {m['peak_rss_mb']:.0f} MB, "
        f"{result['rows_written']} rows, {result['unknown_product_dropped']} trades of {MISSING_PRODUCT} dropped, "
        f"problems: {problems or 'none'}")
    return result


def embedded_phase(args, portfolio: dict) -> dict:
    """The capture generated once, then each engine replays it in a fresh process."""
    run_dir = fresh_run_dir(args, "embedded")
    # Spark's file source reads a folder: the capture gets one of its own.
    capture = os.path.join(run_dir, "capture", "feed.jsonl")
    os.makedirs(os.path.dirname(capture))
    t = time.monotonic()
    sh(generate_command(args, args.embedded_frames, 42, args.trade_rate, TRADES_START) + ["--out", capture])
    generate_s = time.monotonic() - t
    with open(os.path.join(REPO, "required_data/coin_map.json")) as f:
        coin_map = json.load(f)
    coin_map.pop(MISSING_PRODUCT)
    coin_map_path = os.path.join(run_dir, "coin_map.json")
    with open(coin_map_path, "w") as f:
        json.dump(coin_map, f)
    expected = expected_from_capture(capture, coin_map, portfolio)
    log(f"embedded: generated {args.embedded_frames:,} trades ({expected['lines']:,} lines) in {generate_s:.1f} s; "
        f"{expected['unknown_product']:,} of {MISSING_PRODUCT} (outside the run's coin map), "
        f"{expected['rows']:,} profit rows expected")
    # The engines alternate, round after round, so that a slow spell of the shared machine falls on
    # both; the figures compared are each engine's median run (median_embedded_runs).
    runs = []
    for round_no in range(1, args.embedded_runs + 1):
        for engine in args.embedded_engines:
            runs.append(run_embedded(args, engine, capture, coin_map_path, expected, round_no))
            time.sleep(args.pause)
    if not args.keep:
        shutil.rmtree(os.path.dirname(capture))
    return {"trade_frames": args.embedded_frames, "generate_s": round(generate_s, 1), "expected": expected,
            "missing_product": MISSING_PRODUCT, "rounds": args.embedded_runs, "runs": runs}


def median_embedded_runs(embedded: dict | None) -> dict:
    """Each engine's run of median wall among its runs without an error (of an even count, the
    faster of the two middle ones), by engine."""
    by_engine = {}
    for r in (embedded or {}).get("runs", []):
        if not r.get("error"):
            by_engine.setdefault(r["engine"], []).append(r)
    return {e: sorted(rs, key=lambda r: r["wall_s"])[(len(rs) - 1) // 2] for e, rs in by_engine.items()}


def embedded_report(args, embedded: dict) -> list[str]:
    e = embedded["expected"]
    settings = shipped_settings_at(os.path.join(REPO, EMBEDDED_CONFIG))
    max_batch = settings["engine"].get("max_records_per_batch", 50_000)
    lines = ["", "## Embedded job: a Coinbase capture replayed (available-now)", "",
             f"{embedded['trade_frames']:,} trades generated once as Coinbase Exchange feed frames by `coinstream "
             f"generate --count {embedded['trade_frames']} --seed 42 --out` ({e['lines']:,} lines with the heartbeats "
             f"and the subscriptions ack), in {embedded['generate_s']:.1f} s. {embedded['missing_product']} is removed "
             f"from the run's coin map, so its {e['unknown_product']:,} trades are dead-lettered by coinstream and "
             f"dropped by Spark; {e['rows']:,} profit rows remain. Each engine replays the capture in a fresh "
             f"process, start-up included, {embedded.get('rounds', 1)} time(s), the engines alternating; "
             "the ratios and the chart take each engine's median run (marked *).", "",
             "| engine | run | wall s | trade frames/s | same, after 1st batch | first batch written s | CPU s (user+sys) "
             "| peak RSS MB | batches | rows written | dropped (not in the coin map) | other CPU s | check |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    medians = median_embedded_runs(embedded)
    for r in sorted(embedded["runs"], key=lambda r: (r["engine"], r.get("round", 1))):
        check = r.get("error") or ("OK" if not r.get("problems") else "; ".join(r["problems"]))
        mark = " *" if medians.get(r["engine"]) is r else ""
        lines.append(f"| {EMBEDDED_ENGINES[r['engine']]} | {r.get('round', 1)}{mark} | {fmt(r['wall_s'], 2)} | {fmt(r['trade_frames_per_s'], 0)} "
                     f"| {fmt(r.get('trade_frames_per_s_after_first_batch'), 0)} | {fmt(r.get('first_batch_s'), 2)} "
                     f"| {fmt(r['cpu_s'])} | {fmt(r['peak_rss_mb'], 0)} | {fmt(r.get('batches'))} "
                     f"| {fmt(r.get('rows_written'))} | {fmt(r.get('unknown_product_dropped'))} "
                     f"| {fmt(r.get('other_cpu_s'))} | {check} |")
    lines += ["", "How: coinstream runs the shipped `coinstream.toml` (a `coinbase_capture` source, sql/profit.sql, "
              f"the Delta Lake sink writing to disk, file dead letters, the end-of-run P&L report; max "
              f"{fmt(max_batch)} records per batch) with `--set` for the capture, the coin map, the checkpoint, the "
              "sink and dead-letter folders, and `--trigger available-now --no-ui --progress json`, as "
              "bench/embedded.sh does. Spark runs `bench/spark/job.py --variant capture`: `local[2]`, driver memory "
              f"{args.spark_driver_memory}, the JSON file source on the capture's folder with a declared schema "
              "(`maxFilesPerTrigger` 1, `trigger(availableNow=True)`: the one file is one batch), trades made as "
              "coinstream's source makes them, an inner broadcast join with the coin map, sql/profit.sql over "
              "the broadcast portfolio with exact decimals, the `noop` sink: Spark writes nothing, coinstream "
              "writes a Delta table. Trade frames/s = the generated trades ÷ wall. First batch written: "
              "coinstream's first progress record with rows, Spark's only batch's end. Check: the rows "
              "written (coinstream: the progress records' `sink.numOutputRows`; Spark: an `observe` count "
              "before the sink) and the trades dropped for a product outside the coin map (coinstream: "
              "`numDeadLetters`; Spark: an `observe` count) against a count in Python from the capture. "
              "Other CPU s: the machine's busy CPU during the run that was not the engine's (idle Kafka and "
              "Cassandra, other work on the machine)."]
    return lines


# --- report ----------------------------------------------------------------------------------------


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(a, b, higher_is_better=True):
    if not a or not b:
        return "–"
    r = a / b
    return f"{r:.1f}×" if r >= 10 else f"{r:.2g}×"


def engine_table(engines, by, sink, columns):
    """A Markdown table, one row per engine that ran on `sink` (engines without a run are left
    out): `columns` are (header, cell of the run), right-aligned after the engine's name."""
    lines = ["| engine | " + " | ".join(header for header, _ in columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for e in engines:
        r = by.get((e, sink))
        if r:
            lines.append(f"| {ENGINES[e]} | " + " | ".join(cell(r) for _, cell in columns) + " |")
    return lines


# Where a live run's rows went.
STORES = {"cassandra": "Cassandra", "delta": "Delta (embedded)"}

# The engines' names where space is short (the ratio chart).
SHORT_NAMES = {"spark_udf": "Spark UDF", "spark_sql": "Spark SQL", "coinstream": "coinstream",
               "coinstream_tuned": "coinstream tuned"}


def ratio_rows(runs, live, embedded) -> list[dict]:
    """Every figure that both coinstream and Spark have, with its two values: the one list that the
    ratio table and the ratio chart are drawn from. Each is a dict of figure, pair (which
    coinstream against which Spark job), coinstream, spark, digits (to print the values with) and
    higher_is_better."""
    by = {(r["engine"], r["sink"]): r for r in runs}
    engines = [e for e in ENGINES if any(k[0] == e for k in by)]
    pairs = [(c, s) for c in engines if is_coinstream(c) for s in engines if not is_coinstream(s)]
    rows = []

    def add(figure, pair, c, s, digits, higher_is_better):
        if c and s:
            rows.append({"figure": figure, "pair": pair[0], "short_pair": pair[1], "coinstream": c, "spark": s,
                         "digits": digits, "higher_is_better": higher_is_better})

    def names(c, s):
        return f"{ENGINES[c]} vs {ENGINES[s]}", f"{SHORT_NAMES[c]} vs {SHORT_NAMES[s]}"

    profit_figures = [
        ("throughput → Cassandra, trades/s", "cassandra", "trades_per_s", 0, True),
        ("same, after the 1st batch", "cassandra", "trades_per_s_after_first_batch", 0, True),
        ("throughput compute-only, trades/s", "null", "trades_per_s", 0, True),
        ("same, after the 1st batch", "null", "trades_per_s_after_first_batch", 0, True),
        ("CPU s (→ Cassandra)", "cassandra", "cpu_s", 2, False),
        ("peak RSS MB (→ Cassandra)", "cassandra", "peak_rss_mb", 0, False),
        ("first batch written s (→ Cassandra)", "cassandra", "first_batch_s", 2, False),
    ]
    for figure, sink, key, digits, higher in profit_figures:
        for c, s in pairs:
            add(figure, names(c, s), (by.get((c, sink)) or {}).get(key),
                (by.get((s, sink)) or {}).get(key), digits, higher)
    for c, s in pairs:
        lc = min((r for r in live if r["engine"] == c and r.get("p99_ms") and r.get("store", "cassandra") == "cassandra"),
                 key=lambda r: r["p99_ms"], default=None)
        ls = next((r for r in live if r["engine"] == s), None)
        add("live p99 ms", names(c, s), lc and lc["p99_ms"], ls and ls.get("p99_ms"), 1, False)
    if embedded:
        e = median_embedded_runs(embedded)
        c, s = e.get("coinstream", {}), e.get("spark", {})
        pair = ("coinstream.toml vs Spark's capture job (above)", "coinstream.toml vs Spark capture job")
        add("embedded: throughput, trade frames/s", pair, c.get("trade_frames_per_s"), s.get("trade_frames_per_s"), 0, True)
        add("embedded: CPU s", pair, c.get("cpu_s"), s.get("cpu_s"), 2, False)
        add("embedded: peak RSS MB", pair, c.get("peak_rss_mb"), s.get("peak_rss_mb"), 0, False)
        add("embedded: first batch written s", pair, c.get("first_batch_s"), s.get("first_batch_s"), 2, False)
    return rows


def unused_name(folder: str, base: str) -> str:
    """`base`, or `base-2`, `base-3`, ... : the first whose .md, .json and .png are all absent from
    `folder`, so a second run on the same day does not overwrite the first."""
    name, n = base, 1
    while any(os.path.exists(os.path.join(folder, name + ext)) for ext in (".md", ".json", ".png")):
        n += 1
        name = f"{base}-{n}"
    return name


def report(args, facts, runs, live, generate_s, equal_check, date, ohlcv=None, embedded=None) -> str:
    by = {(r["engine"], r["sink"]): r for r in runs}
    profit_file = shipped_settings(PROFIT_PIPELINE)
    engines = [e for e in ENGINES if any(k[0] == e for k in by)]
    lines = [f"# Benchmark {date}: coinstream vs the seeds' Spark Structured Streaming job", ""]
    lines += [f"Command: `{args.command}`", ""]
    if runs:
        lines += [
            f"{args.trades:,} generated trades (90% on the 9 portfolio products, so "
            f"{fmt(next((r.get('rows_expected') for r in runs if r.get('rows_expected')), None))} rows to write), "
            f"in one Kafka topic with {args.partitions} partitions, produced once by `coinstream generate --topic` "
            f"in {generate_s:.1f} s. Every engine reads the same topic from the start (available-now: drain, "
            f"then exit) into a fresh Cassandra table with the same schema; each run is one fresh process, "
            f"so JVM and Python start-up is inside the wall time (that is what an available-now job pays).",
            "",
            "## Kafka → profit → Cassandra", "",
        ]
        lines += engine_table(engines, by, "cassandra", [
            ("wall s", lambda r: fmt(r['wall_s'])),
            ("trades/s", lambda r: fmt(r['trades_per_s'], 0)),
            ("trades/s after 1st batch", lambda r: fmt(r.get('trades_per_s_after_first_batch'), 0)),
            ("rows in Cassandra", lambda r: fmt(r.get('rows_in_cassandra'))),
            ("first batch written s", lambda r: fmt(r['first_batch_s'], 2)),
            ("CPU s (user+sys)", lambda r: fmt(r['cpu_s'])),
            ("Cassandra CPU s", lambda r: fmt(r['service_cpu_s'].get('cassandra'))),
            ("peak RSS MB", lambda r: fmt(r['peak_rss_mb'], 0)),
            ("other CPU s", lambda r: fmt(r.get('other_cpu_s'))),
        ])
        lines += ["", "## Compute only (Spark `noop` sink, coinstream `null` sink)", ""]
        lines += engine_table(engines, by, "null", [
            ("wall s", lambda r: fmt(r['wall_s'])),
            ("trades/s", lambda r: fmt(r['trades_per_s'], 0)),
            ("trades/s after 1st batch", lambda r: fmt(r.get('trades_per_s_after_first_batch'), 0)),
            ("first batch s", lambda r: fmt(r['first_batch_s'], 2)),
            ("CPU s", lambda r: fmt(r['cpu_s'])),
            ("peak RSS MB", lambda r: fmt(r['peak_rss_mb'], 0)),
            ("other CPU s", lambda r: fmt(r.get('other_cpu_s'))),
        ])
    if live:
        lines += ["", f"## Live: {args.live_rate:,.0f} trades/s for {args.live_seconds:.0f} s "
                  f"(after {args.live_warmup:.0f} s of warm-up), latency from send to the store: Cassandra's write "
                  "time, or the modification time of the Delta commit's log entry that made the row readable "
                  "(coinstream's embedded store: coinstream.toml's Delta sink on local disk)", "",
                  "| engine | store | trigger | rows measured | p50 ms | p99 ms | max ms | CPU s (whole run) | peak RSS MB |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in live:
            lines.append(
                f"| {ENGINES[r['engine']]} | {STORES[r.get('store', 'cassandra')]} | {r['trigger']} "
                f"| {fmt(r['rows_measured'])} of {fmt(r['rows_expected_measured'])} "
                f"| {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} | {fmt(r.get('max_ms'))} | {fmt(r['engine_cpu_s'])} "
                f"| {fmt(r['peak_rss_mb'], 0)} |"
            )
        tails = [r for r in live if r.get("tail")]
        if tails:
            lines += ["", f"Where coinstream's live tail comes from (its slowest 1% of rows, and its micro-batches "
                      f"that took over {SLOW_BATCH_MS} ms, by their longest stage; from its progress records):", ""]
            for r in tails:
                t = r["tail"]
                stages = ", ".join(f"{k} {v}" for k, v in t["over_25ms_by_longest_stage"].items()) or "none"
                longest = ", ".join(f"{k} {v}" for k, v in t["longest_batch_ms"].items() if v)
                lines.append(
                    f"- {STORES[r.get('store', 'cassandra')]}, {r['trigger']}: the slowest {fmt(t['slow_rows'])} rows "
                    f"waited {fmt(t['waited_for_batch_ms'])} ms on average for the batch that took them to start, "
                    f"then {fmt(t['in_batch_ms'])} ms in it; {fmt(t['batches_over_25ms'])} of {fmt(t['batches'])} "
                    f"batches took over {SLOW_BATCH_MS} ms ({stages}); the longest (ms): {longest}."
                )
    if embedded:
        lines += embedded_report(args, embedded)
    ratios = ratio_rows(runs, live, embedded)
    if ratios:
        lines += ["", "## coinstream ÷ Spark", "",
                  "Every figure measured for both: coinstream's value divided by Spark's. Throughput: higher is "
                  "better for coinstream (5× = five times Spark's); CPU, memory, first batch and latency: lower "
                  "is better (0.10× = a tenth of Spark's).", "",
                  "| figure | coinstream vs | coinstream | Spark | coinstream ÷ Spark | better |",
                  "| --- | --- | ---: | ---: | ---: | --- |"]
        for r in ratios:
            lines.append(f"| {r['figure']} | {r['pair']} | {fmt(r['coinstream'], r['digits'])} "
                         f"| {fmt(r['spark'], r['digits'])} | {ratio(r['coinstream'], r['spark'])} "
                         f"| {'higher' if r['higher_is_better'] else 'lower'} |")
        if any(r["figure"] == "live p99 ms" for r in ratios):
            lines += ["", "Live p99: coinstream's best trigger above."]
        if "coinstream_tuned" in engines:
            lines += ["", f"coinstream, Kafka source tuned: the same config plus `[source] properties = "
                      f"{json.dumps(TUNED_SOURCE_PROPERTIES)}` (librdkafka), to show what the source's prefetch "
                      "costs and gains."]
    if ohlcv:
        lines += ohlcv_report(args, ohlcv)
    if runs:
        lines += ["", "## Checks", ""]
    for r in runs:
        if r["sink"] != "cassandra":
            continue
        ok = (r.get("rows_in_cassandra") == r.get("rows_expected") and not r.get("partition_mismatches")
              and not r.get("profit_problems"))
        lines.append(
            f"- {ENGINES[r['engine']]}: {fmt(r.get('rows_in_cassandra'))} rows in Cassandra, expected "
            f"{fmt(r.get('rows_expected'))}; {fmt(r.get('sampled_rows'))} sampled rows (the first {args.sample} "
            f"of each partition) checked against an exact recomputation from the generated records: "
            f"{'OK' if ok else 'MISMATCH ' + '; '.join((r.get('partition_mismatches') or []) + (r.get('profit_problems') or []))[:500]}"
        )
    if equal_check:
        lines.append(f"- Across engines: {equal_check}")
    if embedded:
        if not runs:
            lines += ["", "## Checks", ""]
        e = embedded["expected"]
        for r in embedded["runs"]:
            verdict = r.get("error") or ("OK" if not r.get("problems") else "MISMATCH " + "; ".join(r["problems"]))
            lines.append(f"- Embedded, {EMBEDDED_ENGINES[r['engine']]} run {r.get('round', 1)}: "
                         f"{fmt(r.get('rows_written'))} rows written, "
                         f"{fmt(r.get('unknown_product_dropped'))} trades of {embedded['missing_product']} dropped; "
                         f"counted from the capture: {fmt(e['rows'])} and {fmt(e['unknown_product'])} "
                         f"({fmt(e['repeats'])} repeated trades): {verdict}")
    lines += ["", "## How it was measured", "",
              "- wall: from the engine process's start to the exit of its whole process tree (all rows are "
              "in Cassandra then: coinstream commits a batch only after Cassandra acknowledged every row, "
              "Spark's `foreachBatch` returns after the connector's writes). trades/s = trades read ÷ wall.",
              "- first batch written: the first coinstream progress line with rows (printed after the "
              "sink acknowledged and the offsets were committed) or the end of Spark's first batch with rows "
              "(its progress record's timestamp + triggerExecution), timed from process start.",
              "- CPU: user+sys of the engine's whole process tree (bench/measure.py becomes a child subreaper, "
              "so the JVM PySpark starts and the Python UDF workers are counted): the larger of the `wait4` "
              "rusage and the sum of each process's own CPU time sampled every 100 ms (rusage misses "
              "PySpark's Python workers that nobody waits for). "
              "Kafka's and Cassandra's own CPU is not in it (see `service_cpu_s` in the JSON).",
              "- peak RSS: the largest sum of VmRSS over the tree, sampled every 100 ms, or the largest peak "
              "of one process (`wait4`'s ru_maxrss) if that is more (a run shorter than a few samples).",
              f"- Spark: pyspark {facts.get('pyspark', '?')}, `local[2]`, driver memory {args.spark_driver_memory}, "
              f"`trigger(availableNow=True)`, maxOffsetsPerTrigger {args.spark_max_offsets or 'unset'}, "
              "spark-sql-kafka and spark-cassandra-connector 3.5.1 from Maven Central as local jars, default "
              "connector write settings, LOCAL_QUORUM. coinstream: `pipelines/kafka-cassandra.toml` as shipped "
              f"(max {fmt(profit_file['engine']['max_records_per_batch'])} records per batch, "
              f"{profit_file['sink']['consistency'].upper()}) with `--set` overrides for the run's topic, group, "
              "keyspace, table, dead-letter topic and checkpoint (`sink = { type = \"null\" }` for the runs "
              "without Cassandra).",
              "- live: `bench/PacedProducer.java` (kafka-clients, acks=all, linger.ms=1) sends pre-generated "
              "records at a fixed rate and logs each send time; latency = Cassandra `WRITETIME(profit)` − send "
              "time, over every portfolio trade sent after the warm-up. WRITETIME is the write's timestamp "
              "as the coordinator (coinstream: server-side) or the connector's driver (client-side) set it.",
              "", "## Machine", ""]
    for k, v in facts.items():
        lines.append(f"- {k}: {v}")
    lines.append("- load average before each run: in the tables (other engineers compile on this machine in bursts; "
                 "Kafka and Cassandra run on the same 2 cores as the engines)")
    return "\n".join(lines) + "\n"


def chart(path: str, runs, live, embedded=None) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    by = {(r["engine"], r["sink"]): r for r in runs}
    engines = [e for e in ENGINES if any(k[0] == e for k in by)]
    labels = {"spark_udf": "Spark\n(Python UDF)", "spark_sql": "Spark\n(SQL join)", "coinstream": "coinstream",
              "coinstream_tuned": "coinstream\n(source tuned)"}
    colors = {"spark_udf": "#d62728", "spark_sql": "#ff7f0e", "coinstream": "#2ca02c", "coinstream_tuned": "#98df8a"}
    embedded_runs = list(median_embedded_runs(embedded).values())
    ratios = ratio_rows(runs, live, embedded)
    # Rows of panels: the profit runs' 2 × 2, the embedded job's 1 × 2, every ratio across both columns.
    heights = ([4, 4] if runs else []) + ([4] if embedded_runs else []) + ([0.8 + 0.32 * len(ratios)] if ratios else [])
    if not heights:
        return "nothing to draw: no chart"
    fig = plt.figure(figsize=(11, sum(heights) + 1))
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights)
    row = 0

    def bars(ax, values, title, unit, names=labels, palette=colors):
        xs = [names[e] for e, _ in values]
        ys = [v or 0 for _, v in values]
        b = ax.bar(xs, ys, color=[palette[e] for e, _ in values])
        ax.set_title(title)
        ax.set_ylabel(unit)
        for rect, y in zip(b, ys):
            ax.annotate(f"{y:,.0f}" if y >= 10 else f"{y:.2g}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=9)

    if runs:
        axes = [[fig.add_subplot(grid[row + i, j]) for j in range(2)] for i in range(2)]
        row += 2
        bars(axes[0][0], [(e, by.get((e, "cassandra"), {}).get("trades_per_s")) for e in engines],
             "Kafka → Cassandra throughput", "trades/s (higher is better)")
        bars(axes[0][1], [(e, by.get((e, "null"), {}).get("trades_per_s")) for e in engines],
             "Compute only (noop / null sink)", "trades/s (higher is better)")
        bars(axes[1][0], [(e, by.get((e, "cassandra"), {}).get("peak_rss_mb")) for e in engines],
             "Peak RSS of the process tree (→ Cassandra)", "MB (lower is better)")
        ax = axes[1][1]
        if live:
            # Five or more bars share half the figure's width: the trigger without its
            # `interval:` prefix, and the store on a line of its own, keep the labels apart.
            xs = [labels[r["engine"]]
                  + (f"\n{r['trigger'].removeprefix('interval:')}" if is_coinstream(r["engine"]) else "")
                  + ("\nDelta" if r.get("store") == "delta" else "") for r in live]
            p50 = [r.get("p50_ms") or 0 for r in live]
            p99 = [r.get("p99_ms") or 0 for r in live]
            x = range(len(xs))
            ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#1f77b4")
            ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color="#9467bd")
            ax.set_xticks(list(x), xs, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms, log scale (lower is better)")
            ax.set_title("Live end-to-end latency")
            ax.legend()
            for i in x:
                ax.annotate(f"{p99[i]:,.0f}", (i + 0.2, p99[i] or 1), ha="center", va="bottom", fontsize=9)
        else:
            bars(ax, [(e, by.get((e, "cassandra"), {}).get("cpu_s")) for e in engines],
                 "CPU seconds (→ Cassandra)", "s (lower is better)")
    if embedded_runs:
        names = {"coinstream": "coinstream\n(Delta sink)", "spark": "Spark\n(noop sink)"}
        palette = {"coinstream": colors["coinstream"], "spark": colors["spark_sql"]}
        left, right = fig.add_subplot(grid[row, 0]), fig.add_subplot(grid[row, 1])
        row += 1
        bars(left, [(r["engine"], r["trade_frames_per_s"]) for r in embedded_runs],
             f"Embedded job: {embedded['trade_frames']:,}-trade capture",
             "trade frames/s (higher is better)", names, palette)
        bars(right, [(r["engine"], r["peak_rss_mb"]) for r in embedded_runs],
             "Embedded job: peak RSS", "MB (lower is better)", names, palette)
    if ratios:
        ax = fig.add_subplot(grid[row, :])
        ys = list(range(len(ratios)))[::-1]
        values = [r["coinstream"] / r["spark"] for r in ratios]
        better = [(v > 1) == r["higher_is_better"] for v, r in zip(values, ratios)]
        ax.barh(ys, values, color=["#2ca02c" if b else "#d62728" for b in better])
        ax.set_xscale("log")
        # Room on both sides of 1× and for the labels right of the longest bar.
        ax.set_xlim(min(min(values), 1) / 2, max(max(values), 1) * 4)
        ax.axvline(1, color="black", linewidth=0.8)
        ax.set_yticks(ys, [f"{r['figure']}\n{r['short_pair']} ({'higher' if r['higher_is_better'] else 'lower'} "
                           "is better)" for r in ratios], fontsize=7)
        for y, v in zip(ys, values):
            ax.annotate(ratio(v, 1), (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_xlabel("coinstream ÷ Spark, log scale (green: coinstream better, red: Spark better)")
        ax.set_title("coinstream ÷ Spark, every figure")
    fig.suptitle("coinstream vs Spark Structured Streaming (2 cores; Kafka and Cassandra on the same machine)")
    # Leave the title its own half inch above the panels.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (sum(heights) + 1)))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


# --- main -------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trades", type=int, default=1_000_000)
    ap.add_argument("--coinstream-only", action="store_true")
    ap.add_argument("--coinstream-bin", required=True)
    ap.add_argument("--spark-python", help="a Python with pyspark (the bench venv)")
    ap.add_argument("--spark-jars", help="folder of the Spark connector jars")
    ap.add_argument("--spark-max-offsets", type=int, default=100_000)
    ap.add_argument("--spark-driver-memory", default="2g")
    ap.add_argument("--kafka-jars", default=os.path.join(REPO, ".services/jars/kafka"))
    ap.add_argument("--brokers", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--cassandra", default=os.environ.get("CASSANDRA_NODES", "127.0.0.1:9042"))
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--work", default=os.path.join(BENCH, ".work/runs"))
    ap.add_argument("--results", default=os.path.join(BENCH, "results"))
    ap.add_argument("--engines", default="spark_udf,spark_sql,coinstream")
    ap.add_argument("--no-noop", action="store_true", help="skip the compute-only runs")
    ap.add_argument("--live-engines", default="coinstream,spark_sql,spark_udf")
    ap.add_argument("--live-rate", type=float, default=2000)
    ap.add_argument("--live-seconds", type=float, default=60)
    ap.add_argument("--live-warmup", type=float, default=5)
    ap.add_argument("--live-settle", type=float, default=5, help="seconds between engine ready and first send")
    ap.add_argument("--live-drain-timeout", type=float, default=60)
    ap.add_argument("--coinstream-live-triggers", default="interval:10ms,interval:100ms",
                    help="coinstream's live phase runs once per trigger")
    ap.add_argument("--coinstream-live-delta-triggers", default="interval:10ms",
                    help="and once per trigger into the embedded store (coinstream.toml's Delta sink) "
                         "instead of Cassandra; empty skips it")
    ap.add_argument("--ohlcv", action="store_true",
                    help="also run the OHLCV phase (1-minute candles, a stateful window aggregation)")
    ap.add_argument("--ohlcv-only", action="store_true", help="only the OHLCV phase (no profit runs)")
    ap.add_argument("--ohlcv-engines", default="coinstream,spark")
    ap.add_argument("--ohlcv-live-rate", type=float, default=2000)
    ap.add_argument("--ohlcv-live-seconds", type=float, default=90, help="0 skips the OHLCV live part")
    ap.add_argument("--ohlcv-live-trigger", default="interval:100ms", help="coinstream's trigger in the OHLCV live part")
    ap.add_argument("--trade-rate", type=float, default=20,
                    help="trades per second of trade time in the generated topic (`coinstream generate --rate`)")
    ap.add_argument("--sample", type=int, default=50, help="rows per partition whose profit is checked")
    ap.add_argument("--run-timeout", type=float, default=1200)
    ap.add_argument("--pause", type=float, default=5, help="seconds between runs (Cassandra settles)")
    ap.add_argument("--no-embedded", action="store_true",
                    help="skip the embedded phase (a generated Coinbase capture replayed by each engine)")
    ap.add_argument("--embedded-only", action="store_true",
                    help="only the embedded phase (no Kafka topic, no Cassandra)")
    ap.add_argument("--embedded-frames", type=int, default=1_000_000,
                    help="trades in the embedded phase's capture (`coinstream generate --count`)")
    ap.add_argument("--embedded-engines", default="coinstream,spark")
    ap.add_argument("--embedded-runs", type=int, default=3,
                    help="runs of each engine in the embedded phase, alternating; the median run is compared")
    ap.add_argument("--keep", action="store_true", help="keep the keyspace, tables, topic and capture")
    ap.add_argument("--command", default=os.environ.get("BENCH_COMMAND", "bench/run.sh"),
                    help="the command line to quote in the report")
    args = ap.parse_args()

    if args.ohlcv_only and args.embedded_only:
        ap.error("--ohlcv-only and --embedded-only exclude each other")
    only = args.ohlcv_only or args.embedded_only
    engines = [e for e in args.engines.split(",") if e] if not only else []
    live_engines = [e for e in args.live_engines.split(",") if e] if args.live_seconds > 0 and not only else []
    args.ohlcv = (args.ohlcv or args.ohlcv_only) and not args.embedded_only
    embedded_wanted = args.embedded_only or not (args.no_embedded or args.ohlcv_only)
    args.embedded_engines = [e for e in args.embedded_engines.split(",") if e] if embedded_wanted else []
    if args.embedded_engines and args.embedded_frames <= 0:
        ap.error("--embedded-frames must be positive")
    if args.embedded_engines and args.embedded_runs <= 0:
        ap.error("--embedded-runs must be positive")
    for e in args.embedded_engines:
        if e not in EMBEDDED_ENGINES:
            ap.error(f"unknown embedded engine {e!r} (one of {', '.join(EMBEDDED_ENGINES)})")
    if args.coinstream_only:
        engines = [e for e in engines if is_coinstream(e)]
        live_engines = [e for e in live_engines if is_coinstream(e)]
        args.ohlcv_engines = ",".join(e for e in args.ohlcv_engines.split(",") if e == "coinstream")
        args.embedded_engines = [e for e in args.embedded_engines if e == "coinstream"]
    else:
        live_engines = [e for e in live_engines if e in engines]
        spark = (any(not is_coinstream(e) for e in engines) or (args.ohlcv and "spark" in args.ohlcv_engines.split(","))
                 or "spark" in args.embedded_engines)
        if spark and not (args.spark_python and args.spark_jars):
            ap.error("the Spark runs need --spark-python and --spark-jars (or --coinstream-only)")
    for e in engines + live_engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r}")
    for e in args.ohlcv_engines.split(",") if args.ohlcv else []:
        if e and e not in OHLCV_ENGINES:
            ap.error(f"unknown OHLCV engine {e!r} (one of {', '.join(OHLCV_ENGINES)})")

    t_start = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    args.prefix = f"bench_{stamp}"
    args.keyspace = args.prefix
    args.work = os.path.join(os.path.abspath(args.work), stamp)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    facts = machine_facts(args)
    log(f"work folder {args.work}; load average {facts['loadavg_at_start']}")
    with open(os.path.join(REPO, "required_data/my_Portfolio.json")) as f:
        portfolio = json.load(f)

    # The embedded phase alone needs neither Kafka nor Cassandra.
    uses_kafka = bool(engines or live_engines or args.ohlcv)
    kafka = Kafka(args.brokers, args.kafka_jars)
    topic, records, generate_s = f"{args.prefix}_trades", None, None
    if uses_kafka:
        kafka.create_input(topic, args.partitions)
        with cql.Session.connect(args.cassandra) as s:
            s.execute(f"CREATE KEYSPACE IF NOT EXISTS {args.keyspace} WITH replication = "
                      "{'class': 'SimpleStrategy', 'replication_factor': 1}")

        # The trades: once into the topic, and (same seed, same start: the same records) into a file
        # from which the expected rows and profits are computed independently of every engine.
        gen = generate_command(args, args.trades, 42, args.trade_rate, TRADES_START)
        t = time.monotonic()
        sh(gen + ["--topic", topic, "--brokers", args.brokers])
        generate_s = time.monotonic() - t
        in_topic = kafka.message_count(topic)
        log(f"published {args.trades:,} trades to {topic} in {generate_s:.1f} s ({in_topic:,} messages in the topic)")
        if in_topic != args.trades:
            raise SystemExit(f"the topic holds {in_topic} messages, expected {args.trades}")
        records = os.path.join(args.work, "records.jsonl")
        sh(gen + ["--format", "record", "--out", records])
        partitions, prices = expected_from_records(records, portfolio)
        expected_rows = sum(partitions.values())
        log(f"expected {expected_rows:,} rows in {len(partitions)} Cassandra partitions")

    runs, live = [], []
    sinks = ["cassandra"] + ([] if args.no_noop else ["null"])
    for sink in sinks:
        for engine in engines:
            runs.append(run_engine(args, engine, sink, topic, expected_rows, partitions, prices, portfolio))
            time.sleep(args.pause)
    live_runs = []
    for engine in live_engines:
        if is_coinstream(engine):
            live_runs += [(engine, t, "cassandra") for t in args.coinstream_live_triggers.split(",") if t]
            if engine == "coinstream":
                live_runs += [(engine, t, "delta") for t in args.coinstream_live_delta_triggers.split(",") if t]
        else:
            live_runs.append((engine, None, "cassandra"))
    for i, (engine, trigger, store) in enumerate(live_runs):
        live.append(run_live(args, engine, kafka, i, portfolio, trigger, store))
        time.sleep(args.pause)
    ohlcv = ohlcv_phase(args, kafka, topic, records) if args.ohlcv else None
    embedded = embedded_phase(args, portfolio) if args.embedded_engines else None

    # The same rows from every engine: the sampled rows must be identical across engines.
    samples = {r["engine"]: r.pop("_sample") for r in runs if "_sample" in r}
    equal_check = None
    if len(samples) > 1:
        ref_engine, ref = next(iter(samples.items()))
        diffs = []
        for e, sample in samples.items():
            if set(sample) != set(ref):
                diffs.append(f"{e} sampled other rows than {ref_engine}")
            else:
                bad = [k for k in sample if sample[k][1].compare(ref[k][1]) != 0]
                if bad:
                    diffs.append(f"{e}: {len(bad)} profits differ from {ref_engine}'s, e.g. {bad[0]}")
        equal_check = ("the sampled rows (keys, prices and profits) are identical in every engine's table"
                       if not diffs else "; ".join(diffs))
    else:
        for r in runs:
            r.pop("_sample", None)

    if not args.keep and uses_kafka:
        with cql.Session.connect(args.cassandra) as s:
            s.execute(f"DROP KEYSPACE IF EXISTS {args.keyspace}")
        kafka.delete_topic(topic)
        kafka.delete_topic(f"{topic}_dlq")
        os.remove(records)
    facts["bench_wall_time"] = f"{(time.monotonic() - t_start) / 60:.1f} min"
    facts["loadavg_at_end"] = loadavg()

    date = dt.datetime.now().strftime("%Y-%m-%d")
    base = (date + ("-ohlcv" if args.ohlcv_only else "") + ("-embedded" if args.embedded_only else "")
            + ("" if not args.coinstream_only else "-coinstream-only"))
    base = unused_name(args.results, base)
    png = os.path.join(args.results, base + ".png")
    note = (chart(png, runs, live, embedded) if runs or embedded
            else "neither the profit phases nor the embedded phase ran: no chart")
    md = report(args, facts, runs, live, generate_s, equal_check, date, ohlcv, embedded)
    if note:
        md += f"\n({note})\n"
    else:
        md += f"\n![chart]({os.path.basename(png)})\n"
    md_path = os.path.join(args.results, base + ".md")
    with open(md_path, "w") as f:
        f.write(md)
    with open(os.path.join(args.results, base + ".json"), "w") as f:
        json.dump({"facts": facts, "runs": runs, "live": live, "ohlcv": ohlcv, "embedded": embedded,
                   "ratios": ratio_rows(runs, live, embedded), "generate_s": generate_s, "equal_check": equal_check, "args": {k: v for k, v in vars(args).items()}}, f, indent=1,
                  default=str)
    log(f"wrote {md_path} ({facts['bench_wall_time']})")
    print(md)
    failed = [r for r in runs if r.get("error") or (r["sink"] == "cassandra" and (
        r.get("rows_in_cassandra") != r.get("rows_expected") or r.get("profit_problems")))]
    failed += [r for r in live if r.get("exit_code") not in (0, None) and is_coinstream(r["engine"])]
    if ohlcv:
        failed += [r for r in ohlcv["runs"] if r.get("error") or r.get("problems")]
        failed += [r for r in ohlcv["live"] if r["problems"] or (r["exit_code"] not in (0, None) and r["engine"] == "coinstream")]
    if embedded:
        failed += [r for r in embedded["runs"] if r.get("error") or r.get("problems")]
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_running()
