#!/usr/bin/env python3
"""Peak resident memory of a command, split into what the kernel maps from files and what is
anonymous (heap, stacks, allocator arenas).

    bench/rss_parts.py COMMAND [ARG...]
    bench/rss_parts.py --pid PID      (a process already running, until it exits)

Samples /proc/PID/smaps_rollup every 20 ms while COMMAND runs and prints, in MiB, the sample with
the largest Rss: `Rss`, `Anonymous` and `Pss_File`. For coinstream, `Pss_File` is almost all the
binary's own code and read-only data: the pages of it that start-up and the run touched, with the
pages the kernel maps around each fault (fault-around). `/usr/bin/time`'s peak RSS is the sum.
"""
import re
import subprocess
import sys
import time

FIELDS = ("Rss", "Anonymous", "Pss_File")


def sample(pid):
    """The fields of /proc/PID/smaps_rollup in KiB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    return {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M)}


def main():
    if len(sys.argv) < 2 or sys.argv[1:] == ["--pid"]:
        sys.exit(__doc__)
    if sys.argv[1] == "--pid":
        pid, child = int(sys.argv[2]), None
    else:
        child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
        pid = child.pid
    peak = None
    while child is None or child.poll() is None:
        now = sample(pid)
        if now is None:
            break
        if "Rss" in now and (peak is None or now["Rss"] > peak["Rss"]):
            peak = now
        time.sleep(0.02)
    code = child.wait() if child else 0
    if peak is None:
        sys.exit(f"no sample of process {pid}: it exited within 20 ms")
    print(" ".join(f"{k}={peak.get(k, 0) / 1024:.1f}MiB" for k in FIELDS), f"exit={code}")
    sys.exit(code)


if __name__ == "__main__":
    main()
