"""pjdfstest, the POSIX conformance suite, on a real mount: every subtest must pass.

The suite's source is expected next to the repository (``../shared/third_party/pjdfstest``,
or the directory in ``METAFS_PJDFSTEST_SRC``); it is built into a temporary directory (the
source stays untouched) with autotools and make, and run with ``prove -r`` as root from a
fresh directory on a mount with ``--allow-other`` (the suite switches users).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fuse_fixtures import Mount, mount_factory, needs_fuse  # noqa: F401

pytestmark = [pytest.mark.fuse, needs_fuse]

REPO = Path(__file__).resolve().parent.parent
SOURCE = Path(os.environ.get("METAFS_PJDFSTEST_SRC")
              or REPO.parent / "shared" / "third_party" / "pjdfstest")
# prove's summary lines: "path/to/x.t (Wstat: 0 Tests: 14 Failed: 6)" and the totals
_FAILED_FILE = re.compile(r"^(\S+\.t)\s+\(Wstat: \d+ Tests: (\d+) Failed: (\d+)\)", re.M)
_TOTALS = re.compile(r"^Files=(\d+), Tests=(\d+)", re.M)


def _run(cmd: list[str], cwd: Path, timeout: float) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed in {cwd}:\n{res.stdout[-2000:]}\n"
                             f"{res.stderr[-2000:]}")


@pytest.fixture(scope="module")
def pjdfstest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built copy of pjdfstest; returns its directory (``pjdfstest`` and ``tests/``)."""
    if not (SOURCE / "pjdfstest.c").is_file():
        pytest.skip(f"the pjdfstest source is not at {SOURCE} (set METAFS_PJDFSTEST_SRC)")
    missing = [t for t in ("autoreconf", "make", "cc", "prove") if shutil.which(t) is None]
    assert not missing, f"building and running pjdfstest needs {missing} (scripts/setup.sh test)"
    build = tmp_path_factory.mktemp("pjdfstest") / "src"
    shutil.copytree(SOURCE, build)
    _run(["autoreconf", "-ifs"], build, 300)
    _run(["./configure"], build, 300)
    _run(["make", "pjdfstest"], build, 300)
    return build


def test_pjdfstest_passes_in_full(pjdfstest: Path, mount_factory) -> None:  # noqa: F811
    m: Mount = mount_factory("--allow-other", public=True)
    work = m / "pjdfstest"
    work.mkdir()
    # two test files at a time: the suite waits on the mount far more than it computes,
    # and every file works on names of its own (random ones, from namegen)
    res = subprocess.run(["prove", "-r", "-j", "2", str(pjdfstest / "tests")], cwd=work,
                         capture_output=True, text=True, timeout=1500)
    out = res.stdout + res.stderr
    totals = _TOTALS.search(out)
    assert totals is not None, f"prove gave no summary:\n{out[-3000:]}"
    failed = [(path.replace(str(pjdfstest) + "/", ""), int(n), int(bad))
              for path, n, bad in _FAILED_FILE.findall(out) if int(bad)]  # (or "TODO passed")
    summary = "\n".join(f"  {p}: {bad} of {n} subtests failed" for p, n, bad in failed)
    assert res.returncode == 0 and not failed and "Result: PASS" in out, \
        f"pjdfstest failures ({totals.group(0)}):\n{summary}\n{out[-3000:]}\n{m.log_text()[-2000:]}"
    assert int(totals.group(2)) >= 8000, f"too few subtests ran: {totals.group(0)}"
