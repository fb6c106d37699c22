#!/usr/bin/env python3
"""How long a process's threads ran and how long they waited for a core over SECONDS, from the
kernel's scheduler statistics (/proc/PID/task/*/schedstat: CPU ns, run-queue wait ns, slices).

    python3 bench/probes/run_queue.py PID SECONDS
"""
import os
import sys
import time


def total(pid):
    cpu = wait = slices = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                a, b, c = map(int, f.read().split())
        except (OSError, ValueError):
            continue  # a thread that ended between the listing and the read
        cpu, wait, slices = cpu + a, wait + b, slices + c
    return cpu, wait, slices


pid, seconds = sys.argv[1], float(sys.argv[2])
c0, w0, n0 = total(pid)
time.sleep(seconds)
c1, w1, n1 = total(pid)
print(f"pid {pid}: ran {(c1 - c0) / 1e9:.2f} CPU-s, waited for a core {(w1 - w0) / 1e9:.2f} s "
      f"over {n1 - n0} slices ({(w1 - w0) / max(1, n1 - n0) / 1e6:.3f} ms a slice)")
