"""S3 faults against a real HTTP endpoint made to fail (a proxy in front of moto), and
garbage collection after a writer is killed with SIGKILL in the middle of its upload."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from metafs.blockstore import open_store
from metafs.blockstore.base import StoreUnavailable
from metafs.namenode.gc import gc
from metafs.client import Client
from metafs.config import load
from metafs.errors import FsError

from blockstore_fixtures import FaultProxy, fault_proxy, make_bucket, moto_url  # noqa: F401


def _store(proxy: FaultProxy, moto: str, **kw: object):  # type: ignore[no-untyped-def]
    bucket = make_bucket(moto)
    s = load(overrides={"s3_endpoint": proxy.url, "s3_retries": 4, **kw}, environ={})
    return open_store(f"s3://{bucket}/p", s)


def test_transient_errors_are_retried(fault_proxy: FaultProxy, moto_url: str) -> None:  # noqa: F811
    st = _store(fault_proxy, moto_url)
    for status in (500, 503):
        fault_proxy.fail(3, status)
        st.put(f"1/{status}-a", b"data")          # three failures, then success
        fault_proxy.fail(3, status)
        assert st.get(f"1/{status}-a") == b"data"
    assert fault_proxy.failed == 12


def test_slow_responses_are_retried(fault_proxy: FaultProxy, moto_url: str) -> None:  # noqa: F811
    st = _store(fault_proxy, moto_url, s3_read_timeout=0.5)
    st.put("2/0-s", b"slow")
    fault_proxy.stall(2, 2.0)  # longer than the read timeout
    assert st.get("2/0-s") == b"slow"
    assert fault_proxy.stalled == 2


@pytest.mark.parametrize("status", [500, 503])
def test_persistent_failure_is_eio(fault_proxy: FaultProxy, moto_url: str,  # noqa: F811
                                   status: int) -> None:
    """A server error fails after ``s3_retries`` attempts; an unavailable endpoint (503)
    once ``s3_outage_timeout`` has passed, as StoreUnavailable."""
    st = _store(fault_proxy, moto_url, s3_outage_timeout=1.0)
    fault_proxy.fail_always(status)
    for op in (lambda: st.put("3/0-x", b"x"), lambda: st.get("3/0-x"),
               lambda: list(st.list()), lambda: st.head("3/0-x")):
        before = fault_proxy.failed
        with pytest.raises(FsError) as ei:
            op()
        assert ei.value.errno == errno.EIO
        assert isinstance(ei.value, StoreUnavailable) == (status == 503)
        tries = fault_proxy.failed - before
        assert tries == 4 if status == 500 else tries > 1


def test_failed_upload_leaves_metadata_unchanged(fault_proxy: FaultProxy, moto_url: str,  # noqa: F811
                                                 tmp_path: Path) -> None:
    bucket = make_bucket(moto_url)
    s = load(overrides={"data_dir": str(tmp_path / "d"), "blocks_url": f"s3://{bucket}/fs",
                        "s3_endpoint": fault_proxy.url, "s3_retries": 3, "gc_interval": 0,
                        "block_size": 128 * 1024, "inline_limit": 4096}, environ={})
    c = Client(settings=s)
    try:
        v1 = os.urandom(500_000)
        c.write_bytes("/f", v1)
        before = c.stat("/f")
        fault_proxy.fail_always(500)
        with pytest.raises(OSError) as ei:
            with c.open("/f", "r+b") as f:
                f.seek(1000)
                f.write(os.urandom(300_000))
        assert ei.value.errno == errno.EIO
        fault_proxy.heal()
        after = c.stat("/f")
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        assert c.read_bytes("/f") == v1
    finally:
        fault_proxy.heal()
        c.close()


WRITER = textwrap.dedent("""
    import os, sys
    from metafs.client import Client
    from metafs.config import load
    s = load(overrides={"data_dir": sys.argv[1], "block_size": 65536, "inline_limit": 4096,
                        "gc_interval": 0}, environ={})
    c = Client(settings=s)
    c.write_bytes("/kept", b"k" * 300000)          # committed: must survive
    print("committed", flush=True)
    f = c.open("/victim", "wb")
    i = 0
    while True:                                    # uploads blocks, never commits
        f.write(os.urandom(65536))
        i += 1
        if i == 8:
            print("uploading", flush=True)
""")


def test_gc_after_writer_killed_mid_upload(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "committed"
        assert proc.stdout.readline().strip() == "uploading"
        store = open_store((data_dir / "blocks").as_uri())
        while len(list(store.list())) < 12:  # uploads are going on
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    s = load(overrides={"data_dir": str(data_dir), "block_size": 65536, "inline_limit": 4096,
                        "gc_interval": 0}, environ={})
    c = Client(settings=s)
    try:
        ns = c._embedded.ns  # type: ignore[union-attr]
        kept_ino = c.stat("/kept").st_ino
        referenced = {k for k in ns.blocks.known_keys()}
        listed = {b.key for b in ns.blocks.store.list()}
        orphans = listed - referenced
        assert len(referenced) == 5 and referenced <= listed
        assert len(orphans) >= 7
        # within the grace period nothing is removed
        assert gc(ns).deleted == 0
        stats = gc(ns, now=time.time() + 2 * s.gc_grace)
        assert stats.orphans_deleted == len(orphans) and stats.referenced == 5
        left = {b.key for b in ns.blocks.store.list()}
        assert left == referenced and all(k.startswith(f"{kept_ino}/") for k in left)
        assert c.read_bytes("/kept") == b"k" * 300000
    finally:
        c.close()
