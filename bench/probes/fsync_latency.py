#!/usr/bin/env python3
"""How long the checkpoint's atomic write takes on this disk: write about 700 bytes to a temporary
file, fsync it and rename it over the old one (what `engine::checkpoint::write_atomically` does
for each micro-batch's offsets), every 10 ms for SECONDS, in the current folder.

    python3 bench/probes/fsync_latency.py SECONDS

Prints the count, p50, p90, p99, p99.9 and max in milliseconds, and how many took over 25 ms.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quantiles import summary  # noqa: E402

body = b"x" * 700
took = []
end = time.time() + float(sys.argv[1])
while time.time() < end:
    start = time.perf_counter()
    with open("offsets.tmp", "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.rename("offsets.tmp", "offsets")
    took.append((time.perf_counter() - start) * 1000)
    time.sleep(0.01)
os.remove("offsets")
print(summary(took))
