"""The layers of docs/architecture.md hold: the import-linter contracts in pyproject.toml
(imports only go down; the changelog's consumers do not reach into the namenode; the client
does not import the faces built on it) are kept by the code as it is, so a new upward import
fails the suite."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: install the test extra (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([exe, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    counts = re.search(r"Contracts: (\d+) kept, (\d+) broken", proc.stdout)
    assert counts is not None and int(counts[1]) >= 3 and counts[2] == "0", proc.stdout[-3000:]
