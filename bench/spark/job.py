"""The Spark baseline of the benchmark: the seeds' PySpark Structured Streaming job, in two variants,
the OHLCV job of sql/ohlcv_1m.sql, and the embedded job on a capture file.

    python bench/spark/job.py --variant udf|sql|ohlcv --sink cassandra|noop --topic T --jars DIR ...
    python bench/spark/job.py --variant capture --sink noop --input DIR --jars DIR ...

- `udf` is the job as the seeds wrote it: Kafka source, `from_json`, profit computed by a Python
  UDF from the portfolio dict, `foreachBatch` appending each micro-batch to Cassandra through the
  spark-cassandra-connector.
- `sql` is the same job done well: coinstream's own sql/profit.sql (read from the file) in Spark
  SQL, over the portfolio (broadcast to every task) and the coin map as reference views, no Python
  in the data path.

Both use exact decimals, so that the rows equal coinstream's: prices and sizes are
DECIMAL(28,10) as coinstream declares them, and the profit is DECIMAL(38,20) with every digit (the
`sql` variant turns off Spark's decimal precision loss, without which DECIMAL(28,10) operands
would make Spark round the product to 6 decimals). The input is the bus record coinstream reads
(symbol, coin_name, trade_id, sequence, trade_time, price, size, side, ingest_time). Trades of
products outside the portfolio are dropped, as coinstream's inner join drops them.

- `ohlcv` is coinstream's sql/ohlcv_1m.sql (as pipelines/ohlcv.toml runs it) in Spark: 1-minute
  tumbling candles per product, `withWatermark("trade_time", "10 seconds")`,
  `groupBy(symbol, window(trade_time, "1 minute"))`, append mode (each candle written once, when the
  watermark passes the minute's end). open/close are the prices of the earliest/latest trade by
  (trade_time, trade_id) (`min_by`/`max_by` over that struct), volume the exact sum of sizes
  (DECIMAL(38,10)), trade_count a bigint. Every trade counts, in the portfolio or not. Rows:
  symbol, window_start, window_end, open, high, low, close, volume, trade_count.

- `capture` is coinstream's embedded job (coinstream.toml, a `coinbase_capture` source) in Spark:
  the file source reads the folder `--input`, which holds one capture of Coinbase Exchange feed
  frames (`coinstream generate --out`, one JSON message a line), with a declared schema. `match`
  and `last_match` frames become trades as coinstream's source makes them: product_id → symbol,
  `time` → trade_time, the maker's `side` turned into the taker's, DECIMAL(28,10) price and size,
  the coin name from the coin map. Other frames (heartbeats, the subscriptions ack) are skipped.
  Trades of products missing from the coin map are dropped by the inner (broadcast) join with it;
  coinstream dead-letters them. The profit is then the `sql` variant's. coinstream also drops a
  trade whose id is not above its product's last one (a capture repeats `last_match` after a
  reconnect); a generated capture repeats none, so no stateful `dropDuplicates` runs here.
  `observe` counts the trade frames, those of products outside the coin map and the rows written,
  printed as `BENCH_ROWS {...}` at the end, for the bench's correctness check.

When the query has ended, each batch with rows is printed as
`BENCH_BATCH <id> <rows> <unix time it ended> <durationMs>` from Spark's own progress records
(the batch's start plus its triggerExecution time), for bench/bench.py; a stateful query (ohlcv)
also prints `BENCH_STATE {"dropped_by_watermark": N, "last_watermark": "..."}`.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import sys
import time

# The transform the `sql` variant runs, as coinstream runs it.
PROFIT_SQL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sql", "profit.sql")


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["udf", "sql", "ohlcv", "capture"], required=True)
    ap.add_argument("--sink", choices=["cassandra", "noop"], required=True)
    ap.add_argument("--topic", help="the Kafka topic (every variant but capture)")
    ap.add_argument("--input", help="capture only: the folder that holds the capture file")
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--cassandra", default="127.0.0.1:9042")
    ap.add_argument("--keyspace")
    ap.add_argument("--table")
    ap.add_argument("--jars", required=True, help="folder of the connector jars")
    ap.add_argument("--portfolio", help="udf, sql and capture only")
    ap.add_argument("--coin-map", help="udf, sql and capture only")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--max-offsets", type=int, default=0, help="maxOffsetsPerTrigger (0: none)")
    ap.add_argument("--trigger", default="available-now", help="available-now or continuous-microbatch")
    ap.add_argument("--stop-file", help="with continuous-microbatch: stop once this file exists")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="2g")
    return ap.parse_args()


def kafka_trades(spark, args, dec_in):
    """The bus records of the Kafka topic (the udf, sql and ohlcv variants)."""
    from pyspark.sql import functions as F

    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.brokers)
        .option("subscribe", args.topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
    )
    if args.max_offsets > 0:
        raw = raw.option("maxOffsetsPerTrigger", str(args.max_offsets))
    raw = raw.load()

    dec = dec_in.simpleString()
    schema = (
        f"symbol STRING, coin_name STRING, trade_id BIGINT, sequence BIGINT, trade_time STRING, "
        f"price {dec}, size {dec}, side STRING, ingest_time STRING"
    )
    return (
        raw.selectExpr("CAST(value AS STRING) AS value")
        .select(F.from_json(F.col("value"), schema).alias("t"))
        .select("t.*")
        .withColumn("trade_time", F.col("trade_time").cast("timestamp"))
        .withColumn("ingest_time", F.col("ingest_time").cast("timestamp"))
    )


def capture_trades(spark, folder: str, coin_map: dict, dec_in):
    """The trades of the capture in `folder`, as coinstream's `coinbase_capture` source makes them
    (see the module docs), counted by `observe` as they pass."""
    from pyspark.sql import functions as F

    # Only the fields a trade needs; heartbeats and the subscriptions ack parse to mostly nulls.
    # `time` stays text and is cast below, as in the Kafka variants (the JSON reader's default
    # timestamp pattern stops at milliseconds).
    dec = dec_in.simpleString()
    frame = (
        f"type STRING, product_id STRING, trade_id BIGINT, sequence BIGINT, time STRING, "
        f"price {dec}, size {dec}, side STRING"
    )
    matches = (
        spark.readStream.schema(frame)
        .option("maxFilesPerTrigger", "1")
        .json(folder)
        .filter(F.col("type").isin("match", "last_match"))
        .observe(
            "capture",
            F.count(F.lit(1)).alias("trade_frames"),
            F.count(F.when(~F.col("product_id").isin(list(coin_map)), 1)).alias("unknown_product"),
        )
    )
    coins = spark.createDataFrame(list(coin_map.items()), "symbol string, coin_name string")
    return matches.join(F.broadcast(coins), matches.product_id == coins.symbol).select(
        "symbol",
        "coin_name",
        "trade_id",
        "sequence",
        F.col("time").cast("timestamp").alias("trade_time"),
        "price",
        "size",
        # The frame's side is the maker's; the bus record carries the taker's.
        F.when(F.col("side") == "sell", "buy").when(F.col("side") == "buy", "sell").alias("side"),
    )


def main() -> int:
    args = parse_args()
    if (args.variant == "capture") != bool(args.input) or (args.variant != "capture") != bool(args.topic):
        print("--variant capture needs --input, the other variants --topic", file=sys.stderr)
        return 2
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # spark.driver.memory must be known before the JVM starts: pass it on the launcher's command line.
    os.environ["PYSPARK_SUBMIT_ARGS"] = f"--driver-memory {args.driver_memory} pyspark-shell"

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    jars = sorted(glob.glob(os.path.join(args.jars, "*.jar")))
    if not jars:
        print(f"no jars in {args.jars}", file=sys.stderr)
        return 2
    host, _, port = args.cassandra.split(",")[0].rpartition(":")
    spark = (
        SparkSession.builder.master(args.master)
        .appName(f"bench-{args.variant}-{args.sink}")
        .config("spark.jars", ",".join(jars))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.cassandra.connection.host", host)
        .config("spark.cassandra.connection.port", port or "9042")
        .config("spark.cassandra.output.consistency.level", "LOCAL_QUORUM")
        .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")

    if args.variant != "ohlcv":
        if not (args.portfolio and args.coin_map):
            print(f"--variant {args.variant} needs --portfolio and --coin-map", file=sys.stderr)
            return 2
        with open(args.portfolio) as f:
            portfolio = json.load(f)
        with open(args.coin_map) as f:
            coin_map = json.load(f)

    dec_in = T.DecimalType(28, 10)
    if args.variant == "capture":
        trades = capture_trades(spark, args.input, coin_map, dec_in)
    else:
        trades = kafka_trades(spark, args, dec_in)
    dec_out = T.DecimalType(38, 20)

    if args.variant == "ohlcv":
        # sql/ohlcv_1m.sql; the first/last price by (trade_time, trade_id) are min_by/max_by.
        order = F.struct("trade_time", "trade_id")
        result = (
            trades.withWatermark("trade_time", "10 seconds")
            .groupBy(F.col("symbol"), F.window("trade_time", "1 minute"))
            .agg(
                F.min_by("price", order).alias("open"),
                F.max("price").alias("high"),
                F.min("price").alias("low"),
                F.max_by("price", order).alias("close"),
                F.sum("size").alias("volume"),
                F.count(F.lit(1)).alias("trade_count"),
            )
            .select(
                "symbol",
                F.col("window.start").alias("window_start"),
                F.col("window.end").alias("window_end"),
                "open",
                "high",
                "low",
                "close",
                "volume",
                "trade_count",
            )
        )
    elif args.variant == "udf":
        # As the seeds: the portfolio is a Python dict captured by a row-at-a-time Python UDF.
        import decimal

        holdings = {
            s: (decimal.Decimal(h["buy_price"]), decimal.Decimal(h["size"])) for s, h in portfolio.items()
        }

        def calc_profit(symbol, price):
            h = holdings.get(symbol)
            if h is None or price is None:
                return None
            return (price - h[0]) * h[1]

        profit_udf = F.udf(calc_profit, dec_out)
        result = (
            trades.filter(F.col("symbol").isin(list(portfolio)))
            .withColumn("trade_date", F.to_date("trade_time"))
            .withColumn("profit", profit_udf(F.col("symbol"), F.col("price")))
            .select("symbol", "coin_name", "trade_id", "trade_time", "trade_date", "price", "size", "side", "profit")
        )
    else:
        # Without precision loss Spark types (price - buy_price) * size at DECIMAL(38,20), as
        # DataFusion does, instead of rounding it to 6 decimals (the product of two DECIMAL(28,10)
        # needs 58 digits; a profit past 18 integer digits would be null rather than rounded).
        spark.conf.set("spark.sql.decimalOperations.allowPrecisionLoss", "false")
        rows = [(s, h["coin_name"], h["buy_price"], h["size"]) for s, h in portfolio.items()]
        ref = spark.createDataFrame(rows, "symbol string, coin_name string, buy_price string, size string")
        ref = ref.select(
            "symbol",
            "coin_name",
            F.col("buy_price").cast(dec_in).alias("buy_price"),
            F.col("size").cast(dec_in).alias("size"),
        )
        # The hint travels with the view: the join sends the small portfolio to every task.
        F.broadcast(ref).createOrReplaceTempView("portfolio")
        spark.createDataFrame(list(coin_map.items()), "symbol string, coin_name string").createOrReplaceTempView(
            "coins"
        )
        trades.createOrReplaceTempView("trades")
        with open(PROFIT_SQL) as f:
            result = spark.sql(f.read())
        if args.variant == "capture":
            result = result.observe("written", F.count(F.lit(1)).alias("rows"))

    writer = result.writeStream.option("checkpointLocation", args.checkpoint)
    if args.sink == "cassandra":
        keyspace, table = args.keyspace, args.table

        def write_to_cassandra(batch_df, batch_id):
            (
                batch_df.write.format("org.apache.spark.sql.cassandra")
                .mode("append")
                .options(keyspace=keyspace, table=table)
                .save()
            )

        writer = writer.foreachBatch(write_to_cassandra).outputMode("append")
    else:
        writer = writer.format("noop").outputMode("append")

    if args.trigger == "available-now":
        query = writer.trigger(availableNow=True).start()
        print(f"BENCH_STARTED {time.time():.6f}", flush=True)
        query.awaitTermination()
    else:  # micro-batches back to back (Spark's default trigger), until the stop file appears
        query = writer.start()
        print(f"BENCH_STARTED {time.time():.6f}", flush=True)
        while not (args.stop_file and os.path.exists(args.stop_file)):
            if query.awaitTermination(0.5):
                break
        query.stop()
    error = query.exception()
    # When each batch with rows ended (its start + triggerExecution), from Spark's own progress
    # records: the time its rows were written.
    progress = query.recentProgress
    print(f"BENCH_PROGRESS_RECORDS {len(progress)}", flush=True)
    for p in progress:
        if p.get("numInputRows", 0) > 0:
            started = datetime.datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()
            ended = started + p["durationMs"]["triggerExecution"] / 1000
            print(f"BENCH_BATCH {p['batchId']} {p['numInputRows']} {ended:.3f} {json.dumps(p['durationMs'])}", flush=True)
    # A stateful query (ohlcv): the rows its watermark dropped as late, and its last watermark.
    dropped = sum(op.get("numRowsDroppedByWatermark", 0) for p in progress for op in p.get("stateOperators", []))
    watermarks = [p["eventTime"]["watermark"] for p in progress if p.get("eventTime", {}).get("watermark")]
    if any(p.get("stateOperators") for p in progress):
        print(f"BENCH_STATE {json.dumps({'dropped_by_watermark': dropped, 'last_watermark': (watermarks or [None])[-1]})}",
              flush=True)
    # The capture variant: what its `observe` counted, summed over the batches.
    observed = collections.Counter()
    for p in progress:
        for metrics in p.get("observedMetrics", {}).values():
            observed.update({k: v for k, v in metrics.items() if isinstance(v, int)})
    if observed:
        print(f"BENCH_ROWS {json.dumps(dict(observed))}", flush=True)
    spark.stop()
    if error is not None:
        print(f"query failed: {error}", file=sys.stderr)
        return 1
    print(f"BENCH_DONE {time.time():.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
