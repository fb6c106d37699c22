#!/usr/bin/env python3
"""Cassandra alone at the live job's rate: an UNLOGGED batch of 20 rows of one partition every
10 ms (2,000 rows/s), each timed from send to the server's answer, for SECONDS. Uses a keyspace
`probe` on 127.0.0.1:9042 and drops it at the end.

    python3 bench/probes/cassandra_batch_latency.py SECONDS
"""
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [here, os.path.dirname(here)]
from cql import Session  # noqa: E402
from quantiles import summary  # noqa: E402

s = Session.connect()
s.execute("CREATE KEYSPACE IF NOT EXISTS probe WITH replication = "
          "{'class': 'SimpleStrategy', 'replication_factor': 1}")
s.execute("CREATE TABLE IF NOT EXISTS probe.t (symbol text, trade_date date, trade_id bigint, "
          "price decimal, size decimal, PRIMARY KEY ((symbol, trade_date), trade_id))")
took, n = [], 0
end = time.time() + float(sys.argv[1])
while time.time() < end:
    rows = " ".join("INSERT INTO probe.t (symbol, trade_date, trade_id, price, size) VALUES "
                    f"('BTC-USD', '2026-12-04', {n + i}, 97000.12, 0.0015);" for i in range(20))
    n += 20
    start = time.perf_counter()
    s.execute(f"BEGIN UNLOGGED BATCH {rows} APPLY BATCH")
    took.append((time.perf_counter() - start) * 1000)
    time.sleep(max(0.0, 0.01 - (time.perf_counter() - start)))
s.execute("DROP KEYSPACE probe")
print(summary(took))
