"""What the benchmarks share: a PostgreSQL server to run on, ``metafs serve`` namenode
processes on it, and the JSON of the results."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

HERE = Path(__file__).resolve().parents[1]  # this checkout


def pg_admin(url: str, sql: str) -> None:
    """Run ``sql`` (CREATE/DROP DATABASE) on the ``postgres`` database of ``url``'s server."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute(sql)


def reset_pg(url: str) -> None:
    """Empty the database of ``url``: its public schema is dropped and made again."""
    from sqlalchemy import create_engine, text

    eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with eng.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    eng.dispose()


@contextlib.contextmanager
def pg_server(url: str | None = None) -> Iterator[str]:
    """``url``, or a throwaway PostgreSQL server started with pgserver."""
    if url:
        yield url
        return
    import pgserver

    d = tempfile.mkdtemp(prefix="mfpg")  # (a short path: the socket lives there)
    srv = pgserver.get_server(d, cleanup_mode="stop")
    try:
        yield srv.get_uri()
    finally:
        srv.cleanup()
        shutil.rmtree(d, ignore_errors=True)


def start_namenode(work: Path, name: str, args: Sequence[str],
                   env: Mapping[str, str] | None = None, cwd: Path | None = None
                   ) -> tuple[subprocess.Popen, str]:
    """``metafs serve ARGS`` in the background on a free loopback port, logging to
    ``work/NAME.log`` (with no METAFS_ variable of ours but those of ``env``); returns the
    process and its address once it is ready."""
    ready, log_path = work / f"{name}.ready", work / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "metafs.cli", "serve", *args,
                                 "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
                                stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_processes([proc])
            raise RuntimeError(log_path.read_text()[-2000:])
        time.sleep(0.05)
    return proc, ready.read_text()


def stop_processes(procs: Sequence[subprocess.Popen]) -> None:
    """Terminate ``procs``; kill those still running 10 s later."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


@contextlib.contextmanager
def namenodes(url: str, count: int, tree: Path = HERE) -> Iterator[list[str]]:
    """``count`` namenode processes of checkout ``tree`` on the emptied database ``url``;
    yields their addresses."""
    reset_pg(url)
    work = Path(tempfile.mkdtemp(prefix="mfs-nn-"))
    procs: list[subprocess.Popen] = []
    try:
        addrs = []
        for k in range(count):
            p, address = start_namenode(
                work, f"nn{k}", ["--db", url], cwd=tree,
                env={"PYTHONPATH": str(tree), "METAFS_DATA_DIR": str(work / f"nn{k}")})
            procs.append(p)
            addrs.append(address)
        yield addrs
    finally:
        stop_processes(procs)
        shutil.rmtree(work, ignore_errors=True)


def scale_parser(doc: str, n: int, n_help: str, configs: str) -> argparse.ArgumentParser:
    """The options of a benchmark over configurations of namenodes and clients on one
    PostgreSQL: ``--n``, ``--configs`` (read them with :func:`parse_configs`), ``--pg-url`` and
    ``--json``."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=n, help=n_help)
    ap.add_argument("--configs", default=configs, help="comma-separated NAMENODESxCLIENTS")
    ap.add_argument("--pg-url", default=os.environ.get("METAFS_TEST_PG_URL"),
                    help="PostgreSQL server to use (its databases are emptied!); default: "
                         "a throwaway server started with pgserver")
    ap.add_argument("--json", help="also write the results here")
    return ap


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``"1x1,2x8"`` -> ``[(1, 1), (2, 8)]``: (namenodes, clients) pairs."""
    pairs = []
    for item in text.split(","):
        nns, clients = item.split("x")
        pairs.append((int(nns), int(clients)))
    return pairs


def emit_json(payload: Any, path: str | None,
              echo: Literal["indented", "line"] | None = "indented") -> None:
    """Print the results (indented, on one line, or not at all) and, when ``path`` is
    given, write them there indented."""
    if echo:
        print(json.dumps(payload, indent=2 if echo == "indented" else None))
    if path:
        Path(path).write_text(json.dumps(payload, indent=2))
