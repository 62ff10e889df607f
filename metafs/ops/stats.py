"""``metafs stats``: live per-operation rates and latencies of a namenode or a mount.

It reads the Prometheus endpoint the process already serves (``metafs serve
--metrics-port`` or ``metafs mount --metrics-port``) every interval and reports, per
operation, calls per second, errors per second, the mean latency and the 99th percentile
(interpolated in the histogram's buckets, as PromQL's ``histogram_quantile`` does) over
that interval; plus block store throughput, block cache hit ratios and the process's CPU
and memory.
"""

from __future__ import annotations

import errno
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterator

from prometheus_client.parser import text_string_to_metric_families

# histogram family -> (section shown, label naming the operation, family of its results)
SECTIONS = {
    "metafs_op_seconds": ("namenode", "metafs_ops_total"),
    "metafs_fuse_op_seconds": ("fuse", "metafs_fuse_ops_total"),
    "metafs_block_op_seconds": ("blocks", "metafs_block_ops_total"),
}

Key = tuple[str, str]  # (section, operation)


@dataclass
class Sample:
    """One scrape: histogram counts, sums and buckets per operation, and the counters."""

    t: float
    count: dict[Key, float] = field(default_factory=dict)
    total: dict[Key, float] = field(default_factory=dict)
    buckets: dict[Key, dict[float, float]] = field(default_factory=dict)
    errors: dict[Key, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)  # name{labels} -> value


def metrics_url(target: str) -> str:
    """``HOST:PORT``, ``:PORT`` or a URL -> the URL of the metrics page."""
    if "://" in target:
        return target if target.rstrip("/").endswith("/metrics") else \
            target.rstrip("/") + "/metrics"
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"not a metrics address: {target!r} (use HOST:PORT or a URL)")
    return f"http://{host or '127.0.0.1'}:{port}/metrics"


def _op_of(section: str, labels: dict[str, str]) -> str:
    op = labels.get("op", "?")
    return f"{labels['store']}.{op}" if section == "blocks" and "store" in labels else op


def parse(body: str, t: float) -> Sample:
    s = Sample(t)
    result_families = {v[1].removesuffix("_total"): k for k, v in SECTIONS.items()}
    for fam in text_string_to_metric_families(body):
        if fam.name in SECTIONS:
            section = SECTIONS[fam.name][0]
            for m in fam.samples:
                key = (section, _op_of(section, m.labels))
                if m.name.endswith("_count"):
                    s.count[key] = m.value
                elif m.name.endswith("_sum"):
                    s.total[key] = m.value
                elif m.name.endswith("_bucket"):
                    s.buckets.setdefault(key, {})[float(m.labels["le"])] = m.value
        elif fam.name in result_families:
            section = SECTIONS[result_families[fam.name]][0]
            for m in fam.samples:
                if m.name.endswith("_total") and m.labels.get("errno", "OK") != "OK":
                    key = (section, _op_of(section, m.labels))
                    s.errors[key] = s.errors.get(key, 0.0) + m.value
        else:
            for m in fam.samples:
                label = ",".join(f"{k}={v}" for k, v in sorted(m.labels.items()))
                s.values[f"{m.name}{{{label}}}" if label else m.name] = m.value
    return s


def scrape(url: str, timeout: float = 5.0) -> Sample:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        code = reason.errno if isinstance(reason, OSError) and reason.errno else errno.EHOSTUNREACH
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise ConnectionError(code, f"cannot read metrics at {url}: {text}") from None
    return parse(body, time.monotonic())


def quantile(q: float, lo: dict[float, float], hi: dict[float, float]) -> float | None:
    """The ``q`` quantile of the observations between two cumulative bucket snapshots."""
    bounds = sorted(hi)
    counts = [hi[b] - lo.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for b, c in zip(bounds, counts):
        if c >= rank:
            if b == float("inf"):
                return prev_bound  # past the last finite bucket: its bound is all we know
            return prev_bound + (b - prev_bound) * ((rank - prev_count) / max(c - prev_count,
                                                                             1e-12))
        prev_bound, prev_count = b, c
    return prev_bound


def _delta(cur: dict[Any, float], prev: dict[Any, float], key: Any) -> float:
    return max(cur.get(key, 0.0) - prev.get(key, 0.0), 0.0)  # a restart resets counters


def report(prev: Sample, cur: Sample) -> dict[str, Any]:
    """Rates and latencies over the interval between two samples."""
    dt = max(cur.t - prev.t, 1e-9)
    ops: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(cur.count):
        n = _delta(cur.count, prev.count, key)
        if n <= 0:
            continue
        p99 = quantile(0.99, prev.buckets.get(key, {}), cur.buckets.get(key, {}))
        ops.setdefault(key[0], []).append({
            "op": key[1], "calls_per_s": n / dt,
            "errors_per_s": _delta(cur.errors, prev.errors, key) / dt,
            "avg_ms": _delta(cur.total, prev.total, key) / n * 1000,
            "p99_ms": None if p99 is None else p99 * 1000})
    for rows in ops.values():
        rows.sort(key=lambda r: -r["calls_per_s"])
    out: dict[str, Any] = {"interval_s": dt, "ops": ops}
    blocks = {}
    for name in cur.values:
        if name.startswith("metafs_block_bytes_total{"):
            blocks[name[len("metafs_block_bytes_total{"):-1]] = \
                _delta(cur.values, prev.values, name) / dt
    if blocks:
        out["block_bytes_per_s"] = blocks
    caches = {}
    for cache in ("memory", "disk"):
        hits = _delta(cur.values, prev.values, f"metafs_cache_hits_total{{cache={cache}}}")
        misses = _delta(cur.values, prev.values, f"metafs_cache_misses_total{{cache={cache}}}")
        if f"metafs_cache_bytes{{cache={cache}}}" in cur.values:
            caches[cache] = {"hit_ratio": hits / (hits + misses) if hits + misses else None,
                             "lookups_per_s": (hits + misses) / dt,
                             "bytes": cur.values[f"metafs_cache_bytes{{cache={cache}}}"]}
    if caches:
        out["cache"] = caches
    if "process_cpu_seconds_total" in cur.values:
        out["process"] = {
            "cpu_percent": _delta(cur.values, prev.values, "process_cpu_seconds_total")
            / dt * 100,
            "rss_bytes": cur.values.get("process_resident_memory_bytes"),
            "open_fds": cur.values.get("process_open_fds")}
    return out


def follow(url: str, interval: float, count: int | None = None) -> Iterator[dict[str, Any]]:
    """A report every ``interval`` seconds (``count`` of them; None: forever)."""
    prev = scrape(url)
    n = 0
    while count is None or n < count:
        time.sleep(interval)
        cur = scrape(url)
        yield report(prev, cur)
        prev = cur
        n += 1


# ---------------------------------------------------------------------- display
def table(rep: dict[str, Any], source: str) -> Any:
    """A rich renderable of one report."""
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    t = Table(title=f"metafs stats: {source} (every {rep['interval_s']:.1f}s)",
              title_justify="left")
    for col in ("section", "operation", "calls/s", "errors/s", "avg ms", "p99 ms"):
        t.add_column(col, justify="left" if col in ("section", "operation") else "right")
    for section, rows in rep["ops"].items():
        for r in rows:
            p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}"
            t.add_row(section, r["op"], f"{r['calls_per_s']:.1f}", f"{r['errors_per_s']:.1f}",
                      f"{r['avg_ms']:.2f}", p99)
    if not rep["ops"]:
        t.add_row("-", "no calls in this interval", "", "", "", "")
    parts.append(t)
    extra = []
    for what, rate in rep.get("block_bytes_per_s", {}).items():
        extra.append(f"blocks {what}: {rate / 1e6:.1f} MB/s")
    for cache, c in rep.get("cache", {}).items():
        ratio = "-" if c["hit_ratio"] is None else f"{c['hit_ratio'] * 100:.0f}%"
        extra.append(f"{cache} cache: hits {ratio}, {c['bytes'] / 1e6:.0f} MB")
    p = rep.get("process")
    if p:
        rss = f", RSS {p['rss_bytes'] / 1e6:.0f} MB" if p.get("rss_bytes") else ""
        extra.append(f"CPU {p['cpu_percent']:.0f}%{rss}")
    if extra:
        parts.append("  " + " | ".join(extra))
    return Group(*parts)


def run(target: str, *, interval: float = 1.0, count: int | None = None,
        as_json: bool = False, out: Any = None) -> int:
    """What ``metafs stats`` does: JSON lines, or a refreshing table on a terminal."""
    import sys

    if interval <= 0:
        raise ValueError("--interval must be more than 0 seconds")
    if count is not None and count <= 0:
        raise ValueError("--count must be at least 1")
    url = metrics_url(target)
    out = out or sys.stdout
    if as_json:
        for rep in follow(url, interval, count):
            out.write(json.dumps(rep) + "\n")
            out.flush()
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    if not console.is_terminal:  # piped: one table per interval, no redrawing
        for rep in follow(url, interval, count):
            console.print(table(rep, url))
        return 0
    with Live(console=console, auto_refresh=False) as live:
        live.update(f"metafs stats: reading {url} ...", refresh=True)
        for rep in follow(url, interval, count):
            live.update(table(rep, url), refresh=True)
    return 0
