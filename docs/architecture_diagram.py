"""Draw docs/architecture.svg from the layers contract in pyproject.toml (the text source the
import-linter check enforces), so the picture cannot drift from the rule.

    python3 docs/architecture_diagram.py        # rewrites docs/architecture.svg
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "metafs"  # the same file for the same picture
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent


def layers() -> list[list[str]]:
    """The layers, top first, each a list of its modules (``|`` and ``:`` separate siblings)."""
    cfg = tomllib.loads((HERE.parent / "pyproject.toml").read_text())
    contract = next(c for c in cfg["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    out = []
    for layer in contract["layers"]:
        parts = layer.replace(":", "|").split("|")
        out.append([p.strip().removeprefix("metafs.") for p in parts])
    return out


def draw(path: Path) -> None:
    rows = layers()
    fig, ax = plt.subplots(figsize=(9, 0.62 * len(rows) + 0.4))
    ax.set_xlim(0, 9)
    ax.set_ylim(0, len(rows))
    ax.axis("off")
    for i, row in enumerate(rows):
        y = len(rows) - i - 1
        width = 8.3 / len(row)
        for j, name in enumerate(row):
            x = 0.2 + j * width
            ax.add_patch(FancyBboxPatch((x + 0.05, y + 0.12), width - 0.1, 0.7,
                                        boxstyle="round,pad=0.02", fc="#e8eef7", ec="#34527a"))
            ax.text(x + width / 2, y + 0.47, name, ha="center", va="center", fontsize=10,
                    family="monospace")
    ax.annotate("", xy=(8.95, 0.2), xytext=(8.95, len(rows) - 0.2),
                arrowprops={"arrowstyle": "->", "color": "#34527a"})
    ax.text(8.85, len(rows) / 2, "imports go down", rotation=90, ha="right", va="center",
            fontsize=9, color="#34527a")
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


if __name__ == "__main__":
    draw(HERE / "architecture.svg")
