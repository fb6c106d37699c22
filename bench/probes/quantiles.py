"""The one-line latency summary the probes print."""


def summary(ms):
    """`n=… p50=… p90=… p99=… p99.9=… max=… ms; over 25 ms: …` of a list of milliseconds.

    A quantile here is the sample at rank floor(q·n), not interpolated as bench.py's live p99
    (`statistics.quantiles`, inclusive): at the probes' 1,800–4,000 samples the two differ by
    less than the gap between neighbouring samples."""
    ms = sorted(ms)
    q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]  # noqa: E731
    return (f"n={len(ms)} p50={q(.5):.2f} p90={q(.9):.2f} p99={q(.99):.2f} "
            f"p99.9={q(.999):.2f} max={ms[-1]:.2f} ms; over 25 ms: {sum(m > 25 for m in ms)}")
