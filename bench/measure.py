"""Runs one command and measures its whole process tree (Linux only, standard library only).

    python3 bench/measure.py --out m.json [--log run.log] [--marker REGEX] [--stop-file F] -- CMD...

- wall time from just before the exec to the exit of the command and every descendant;
- CPU seconds (user, sys) of the whole tree: this process makes itself a child subreaper
  (prctl PR_SET_CHILD_SUBREAPER), so descendants orphaned by their parent (a JVM that PySpark
  does not wait for, say) are re-parented here and their rusage is counted when reaped; as a
  cross-check, each process's own CPU time as last sampled, summed over the tree;
- peak RSS of the tree: every 100 ms, the sum of VmRSS over the command's live descendants
  (shared pages of forked workers are counted once per process, as `ps` would), or the largest
  one process's own peak (`wait4`'s ru_maxrss, as /usr/bin/time reports it) if that is more: a
  run shorter than a few samples (coinstream on a small capture) has its peak between them;
- the time each line of the command's stdout/stderr appeared, for lines matching --marker
  (the first one is "first batch written"), with the line itself;
- the tree's CPU seconds at the first marker line too, so that startup cost can be told apart.

Output lines go to --log, each prefixed with seconds since start. The JSON written to --out has
wall_s, user_s, sys_s, cpu_rusage_s, cpu_sampled_s, cpu_s (the larger of the two), peak_rss_mb
(the larger of peak_rss_sampled_mb and peak_rss_process_mb), exit_code, markers [[t, line], ...].
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def process_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, rss bytes, utime+stime ticks) for every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        ppid, utime, stime, rss_pages = int(fields[1]), int(fields[11]), int(fields[12]), int(fields[21])
        table[int(name)] = (ppid, rss_pages * PAGE, utime + stime)
    return table


def descendants(root: int, table) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        for c in children.get(p, []):
            out.append(c)
            stack.append(c)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--log")
    ap.add_argument("--marker", help="regex: output lines to time (first = first batch written)")
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=3600, help="SIGTERM the command after this")
    ap.add_argument("--stop-file", help="SIGTERM the command once this file exists")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command")

    set_subreaper()
    me = os.getpid()
    marker = re.compile(args.marker) if args.marker else None
    log = open(args.log, "w", buffering=1) if args.log else None
    markers: list[tuple[float, str]] = []
    peak_rss = 0
    peak_rss_process = 0  # the largest ru_maxrss of a reaped process, bytes
    cpu_at_first_marker = None
    lock = threading.Lock()
    live_ticks: dict[int, int] = {}
    seen_ticks: dict[int, int] = {}  # pid -> its own utime+stime when last sampled

    start_unix = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def pump():
        nonlocal cpu_at_first_marker
        for raw in proc.stdout:
            t = time.monotonic() - t0
            line = raw.decode(errors="replace").rstrip("\n")
            if log:
                log.write(f"{t:9.3f} {line}\n")
            if marker and marker.search(line):
                with lock:
                    markers.append((t, line[:2000]))
                    if cpu_at_first_marker is None:
                        cpu_at_first_marker = sum(live_ticks.values()) / TICKS

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    # A TERM or INT to this process is passed on to the command's process group.
    asked_to_stop = []
    signal.signal(signal.SIGTERM, lambda *_: asked_to_stop.append(time.monotonic()))
    signal.signal(signal.SIGINT, lambda *_: asked_to_stop.append(time.monotonic()))

    # Sample the tree until the command and every descendant re-parented to us are gone.
    user = sys_ = 0.0
    exit_code = None
    deadline = t0 + args.timeout
    terminated, terminated_at = False, 0.0
    while True:
        table = process_table()
        tree = descendants(me, table)
        rss = sum(table[p][1] for p in tree if p in table)
        peak_rss = max(peak_rss, rss)
        with lock:
            live_ticks.clear()
            for p in tree:
                live_ticks[p] = table[p][2]
                seen_ticks[p] = max(seen_ticks.get(p, 0), table[p][2])
        # Reap whatever has exited (the command and orphans alike).
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                pid = -1
                break
            if pid == 0:
                break
            user += ru.ru_utime
            sys_ += ru.ru_stime
            peak_rss_process = max(peak_rss_process, ru.ru_maxrss * 1024)  # Linux: KiB
            if pid == proc.pid:
                exit_code = os.waitstatus_to_exitcode(status)
                proc.returncode = exit_code
        if pid == -1:  # no children left at all
            break
        now = time.monotonic()
        stop_requested = bool(args.stop_file and os.path.exists(args.stop_file)) or bool(asked_to_stop)
        if exit_code is None and not terminated and (now > deadline or stop_requested):
            terminated, terminated_at = True, now
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        elif terminated and exit_code is None and now > terminated_at + 60:
            try:  # a graceful stop that takes a minute is not coming
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(args.interval)
    wall = time.monotonic() - t0
    reader.join(timeout=5)
    if log:
        log.close()
    result = {
        "cmd": cmd,
        "start_unix": start_unix,
        "wall_s": round(wall, 3),
        "user_s": round(user, 3),
        "sys_s": round(sys_, 3),
        "cpu_rusage_s": round(user + sys_, 3),
        # The larger of the two: rusage misses processes that nobody in the tree waited for
        # (seen with PySpark's Python workers), sampling misses each process's last 100 ms.
        "cpu_s": round(max(user + sys_, sum(seen_ticks.values()) / TICKS), 3),
        # Cross-check of cpu_s: each process's own CPU time as last sampled, summed over every
        # process seen in the tree (misses at most the last 100 ms of each).
        "cpu_sampled_s": round(sum(seen_ticks.values()) / TICKS, 3),
        "processes_seen": len(seen_ticks),
        "cpu_at_first_marker_s": cpu_at_first_marker,
        "peak_rss_mb": round(max(peak_rss, peak_rss_process) / 2**20, 1),
        "peak_rss_sampled_mb": round(peak_rss / 2**20, 1),
        "peak_rss_process_mb": round(peak_rss_process / 2**20, 1),
        "exit_code": exit_code,
        "timed_out": terminated and not asked_to_stop and not (args.stop_file and os.path.exists(args.stop_file)),
        "markers": markers,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0 if exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
