"""Draw the JSON results of the benchmarks as PNG charts.

    python benchmarks/plot.py RESULT.json [...] [--out docs/img]

Each benchmark script writes JSON with ``--json``; this turns it into a picture: ops/s per
system (namenode_ops, fuse_ops), metafs/JuiceFS ratios (blocks), latency percentiles
against their targets (search, provenance).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _label(row: dict[str, Any]) -> str:
    parts = [str(row.get("system", "?"))]
    for k in ("engine", "mode"):
        v = row.get(k)
        if v and v != "-":
            parts.append(str(v))
    if row.get("clients", 1) != 1:
        parts.append(f"x{row['clients']}")
    return " ".join(parts)


def plot_rows(rows: list[dict[str, Any]], title: str, out: Path) -> Path:
    """Grouped bars: one group per operation, one bar per system (log scale)."""
    metrics = [k for k in rows[0] if isinstance(rows[0][k], (int, float))
               and k not in ("clients",)]
    metrics = [m for m in metrics if all(isinstance(r.get(m, 0), (int, float)) for r in rows)]
    fig, ax = plt.subplots(figsize=(max(8, len(metrics) * 1.6), 5))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        # a figure a row does not have (bulk rate of the x8 rows, the local disk's bulk)
        # gets no bar, not a sliver at the bottom of the log axis
        have = [(j + i * width, row[m]) for j, m in enumerate(metrics) if row.get(m)]
        ax.bar([x for x, _ in have], [v for _, v in have], width, label=_label(row),
               color=f"C{i % 10}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("per second (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_ratios(ratios: dict[str, dict[str, float]], title: str, out: Path,
                floor: float = 0.8) -> Path:
    """Bars of metafs/peer ratios per metric and store, with 1.0 and the target floor."""
    stores = list(ratios)
    metrics = sorted({m for s in stores for m in ratios[s]})
    fig, ax = plt.subplots(figsize=(max(8, len(metrics) * 1.5), 5))
    width = 0.8 / max(1, len(stores))
    for i, s in enumerate(stores):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [ratios[s].get(m, 0) for m in metrics], width, label=s)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.axhline(floor, color="red", linestyle="--", linewidth=1, label=f"target {floor}x")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("metafs / JuiceFS (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_latency(series: dict[str, dict[str, float]], title: str, out: Path,
                 target_ms: float) -> Path:
    """p50 and p99 bars per query, with the p50 target."""
    names = list(series)
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 1.2), 5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [series[n].get("p50_ms", 0) for n in names], 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [series[n].get("p99_ms", 0) for n in names], 0.4, label="p99")
    ax.axhline(target_ms, color="red", linestyle="--", linewidth=1,
               label=f"p50 target {target_ms:g} ms")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_scale_out(data: dict[str, Any], out: Path) -> Path:
    """scale_out: aggregate ops/s per operation, one bar per system and configuration."""
    rows = data["results"]
    ops = list(rows[0]["ops_per_s"])
    fig, ax = plt.subplots(figsize=(max(8, len(ops) * 2.2), 5))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        label = (f"metafs {r['namenodes']} nn x {r['clients']}" if r["system"] == "metafs"
                 else f"{r['system']} x {r['clients']}")
        xs = [j + i * width for j in range(len(ops))]
        ax.bar(xs, [r["ops_per_s"][o] for o in ops], width, label=label,
               hatch="//" if r["system"] != "metafs" else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ops))], ops)
    ax.set_yscale("log")  # stats served from a kernel cache run to 10^5/s, writes to 10^2
    ax.set_ylabel("aggregate operations/s (log scale)")
    ax.set_title(f"team topology on one PostgreSQL: namenodes x client processes "
                 f"({data.get('n', '?')} files per client)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_file(path: Path, out_dir: Path) -> list[Path]:
    data = json.loads(path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = data.get("benchmark") if isinstance(data, dict) else None
    made: list[Path] = []
    if kind == "scale_out":
        return [plot_scale_out(data, out_dir / "scale_out.png")]
    if isinstance(data, dict) and isinstance(data.get("results"), list) and data["results"]:
        made.append(plot_rows(data["results"], f"{kind or path.stem}: operations per second",
                              out_dir / f"{kind or path.stem}.png"))
    ratios = data.get("ratios") if isinstance(data, dict) else None
    if isinstance(ratios, dict) and all(isinstance(v, dict) and "vs_juicefs" in v
                                        for v in ratios.values()):
        # fuse_ops: metafs / JuiceFS per operation, each against its own target
        by_peer = {"FUSE mount": {op: v["vs_juicefs"] for op, v in ratios.items()
                                  if v.get("vs_juicefs")}}
        made.append(plot_ratios(by_peer, "FUSE mount: metafs / JuiceFS (same run)",
                                out_dir / "fuse_ops_ratios.png", floor=1.0))
    if isinstance(data, dict) and isinstance(data.get("metafs_over_juicefs"), dict):
        made.append(plot_ratios(data["metafs_over_juicefs"], "blocks: metafs / JuiceFS",
                                out_dir / "blocks_ratios.png"))
    if isinstance(data, dict) and isinstance(data.get("queries"), (dict, list)):
        q = data["queries"]
        series = ({item.get("shape") or item.get("name") or str(i): item for i, item in enumerate(q)}
                  if isinstance(q, list) else q)
        made.append(plot_latency(series, f"search at {data.get('files', '?'):,} files",
                                 out_dir / "search_latency.png", 50))
    if isinstance(data, dict) and "upstream" in data and "downstream" in data:
        series = {k: v for k, v in data.items()
                  if isinstance(v, dict) and "p50_ms" in v}
        made.append(plot_latency(series, "provenance queries", out_dir / "provenance.png",
                                 float(data.get("target_p50_ms", 100))))
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    args = ap.parse_args(argv)
    for f in args.files:
        for p in plot_file(f, args.out):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
