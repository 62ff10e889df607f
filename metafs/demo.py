"""``metafs demo``: metafs working end to end on the embedded default.

It makes a data set with the bulk API (small files inline in the SQLite file), tags the
files with JSON in user.* xattrs, writes a model, renames the data set, reads the changelog,
searches the tags and asks for the model's provenance where those parts are installed, and
finally mounts the file system with FUSE and lists it with ordinary programs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from .config import Settings

console = Console()


def _step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def _optional(title: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except ImportError as exc:
        console.print(f"[yellow]{title}: skipped ({exc.name} is not installed)")


def run_demo(settings: Settings, mount: bool = True) -> int:
    from .client import BulkFile, Client

    made_tmp = False
    if not os.environ.get("METAFS_DATA_DIR") and settings.data_dir.endswith("metafs") \
            and not settings.namenode:
        settings = settings.with_(data_dir=tempfile.mkdtemp(prefix="metafs-demo-"))
        made_tmp = True
    where = settings.namenode or settings.data_dir
    console.print(f"[bold]metafs demo[/] on [green]{where}[/] "
                  f"(metadata: {settings.effective_db_url})")
    try:
        with Client(settings=settings) as fs:
            _step("1. ingest a data set with the bulk API (one transaction)")
            rng = random.Random(7)
            entries = []
            for i in range(2000):
                tags = {"bicycles": rng.randint(0, 6), "split": rng.choice(["train", "val"]),
                        "labels": rng.sample(["car", "person", "dog", "tree"], 2)}
                entries.append(BulkFile(f"images/img{i:05d}.jpg", os.urandom(512),
                                        xattrs={"user.tags": json.dumps(tags).encode()}))
            fs.makedirs("/datasets", exist_ok=True)
            t = time.perf_counter()
            fs.bulk_create("/datasets/coco-mini", entries)
            dt = time.perf_counter() - t
            console.print(f"created {len(entries)} tagged files in {dt * 1000:.0f} ms "
                          f"({len(entries) / dt:,.0f} files/s), stored inline in the database")

            _step("2. ordinary file operations")
            fs.makedirs("/models", exist_ok=True)
            with fs.open("/models/resnet.pt", "wb") as f:
                f.write(os.urandom(20_000))
            fs.rename("/datasets/coco-mini", "/datasets/coco")
            fs.symlink("/datasets/coco/images", "/latest-images")
            table = Table("path", "type", "size", "inode")
            for path in ("/datasets/coco", "/datasets/coco/images/img00001.jpg",
                         "/models/resnet.pt", "/latest-images"):
                st = fs.lstat(path)
                kind = "dir" if fs.isdir(path) and not fs.islink(path) else (
                    "symlink" if fs.islink(path) else "file")
                table.add_row(path, kind, str(st.st_size), str(st.st_ino))
            console.print(table)
            console.print("tags of img00001.jpg:",
                          fs.getxattr("/datasets/coco/images/img00001.jpg", "user.tags").decode())

            _step("3. the changelog (every committed change, in commit order)")
            head = fs.changelog_head()
            recs, _ = fs.changelog(max(0, head - 5), 5)
            from .proto import metafs_pb2 as pb

            for r in recs:
                console.print(f"  seq={r.seq:<6} {pb.Op.Name(r.op):<14} ino={r.ino:<6} "
                              f"{r.old_name + ' -> ' if r.old_name else ''}{r.name}")

            _optional("search", lambda: _search(fs))
            _optional("provenance", lambda: _provenance(fs))
        if mount:
            _optional("mount", lambda: _mount(settings))
    finally:
        if made_tmp:
            shutil.rmtree(settings.data_dir, ignore_errors=True)
    console.print("[bold green]demo finished")
    return 0


def _search(fs: Any) -> None:
    from .cdc.search import api as search_api  # noqa: F401

    _step("4. search the tags")
    query = "tags.bicycles>3 tags.split=train under:/datasets/coco"
    t = time.perf_counter()
    res = fs.search(query, limit=5, wait=True, count=True)
    dt = (time.perf_counter() - t) * 1000
    console.print(f"query [bold]{query}[/]: {res.total} matches, answered in {dt:.0f} ms "
                  f"(index at changelog position {res.position}); the first 5:")
    for path in res.paths:
        console.print(f"  {path}")


def _provenance(fs: Any) -> None:
    from .cdc import provenance  # noqa: F401

    _step("5. provenance")
    import metafs

    run_fn = metafs.run
    with run_fn("demo-train", params={"lr": 0.1}, client=fs):
        for i in range(3):
            with fs.open(f"/datasets/coco/images/img{i:05d}.jpg", "rb") as f:
                f.read()
        with fs.open("/models/demo-model.pt", "wb") as f:
            f.write(b"weights")
    from .cdc.provenance.render import render_graph

    graph = fs.upstream("/models/demo-model.pt")
    console.print("upstream of /models/demo-model.pt (Mermaid):")
    console.print(render_graph(graph, "mermaid"), markup=False)


def _mount(settings: Settings) -> None:
    from . import fuse  # noqa: F401

    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        console.print("[yellow]mount: skipped (needs root and /dev/fuse)")
        return
    _step("6. mount with FUSE and use ordinary programs")
    mnt = tempfile.mkdtemp(prefix="metafs-mnt-")
    exe = [sys.executable, "-m", "metafs.cli"]
    subprocess.run(exe + ["mount", mnt, "--data", settings.data_dir], check=True)
    try:
        out = subprocess.run(["ls", "-la", mnt], capture_output=True, text=True, check=True)
        console.print(out.stdout)
        subprocess.run(["sh", "-c", f"echo hello from the shell > {mnt}/hello.txt"], check=True)
        console.print(Path(mnt, "hello.txt").read_text().strip())
        count = subprocess.run(["sh", "-c", f"ls {mnt}/datasets/coco/images | wc -l"],
                               capture_output=True, text=True, check=True).stdout.strip()
        console.print(f"{count} files visible under the mount's data set directory")
    finally:
        subprocess.run(exe + ["umount", mnt], check=False)
        shutil.rmtree(mnt, ignore_errors=True)
