"""Parts for fault runs (tests/test_faults.py, benchmarks/soak_restarts.py): namenodes as
``metafs serve`` processes that can be killed, hung and restarted on the same address, a TCP
proxy process that cuts the network to a server (an S3 endpoint) while it is down, and
ordinary programs that use a mount while that happens and say what they saw.

The writer writes files of known contents (small ones, or larger ones that go to the
block store), fsyncs each, and only then logs its name
(so every name in its log must be intact afterwards); it reports each error it met and
the longest time one file took (the outage a program waited through). The reader lists the
directory and stats what it finds, the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def content(i: int, size: int = 3000) -> bytes:
    """The bytes the writer puts in file number ``i``."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class NamenodeProcess:
    """``metafs serve`` on a fixed address, killed (SIGKILL) and started again at will."""

    def __init__(self, workdir: Path, *, data_dir: Path | None = None, db_url: str = "",
                 blocks_url: str = "", port: int = 0, env: dict[str, str] | None = None,
                 name: str = "nn") -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.db_url = db_url
        self.blocks_url = blocks_url
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, **(env or {}))
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 120.0) -> "NamenodeProcess":
        self.starts += 1
        ready = self.workdir / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        args = [sys.executable, "-m", "metafs.cli", "serve", "--listen", self.address,
                "--ready-file", str(ready), "--no-index"]
        if self.data_dir is not None:
            args += ["--data", str(self.data_dir)]
        if self.db_url:
            args += ["--db", self.db_url]
        if self.blocks_url:
            args += ["--blocks", self.blocks_url]
        log = open(self.workdir / f"{self.name}.{self.starts}.log", "wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"metafs serve exited with {self.proc.returncode}: "
                                   + self.log_text())
            if time.monotonic() > deadline:
                raise RuntimeError("metafs serve did not become ready: " + self.log_text())
            time.sleep(0.05)
        return self

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob(f"{self.name}.*.log")))

    def kill(self) -> None:
        """SIGKILL: no shutdown, connections reset, whatever was in flight is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def hang(self) -> None:
        """SIGSTOP: the process answers nothing while its kernel still accepts connections
        and keeps the open ones, as a wedged or swapped-out namenode does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`hang`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


PROXY = textwrap.dedent('''
    import socket, sys, threading
    port, host, upstream = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    def pipe(a, b):
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            a.close()

    srv = socket.create_server((host, port))
    while True:
        c, _ = srv.accept()
        try:
            u = socket.create_connection((host, upstream))
        except OSError:
            c.close()
            continue
        threading.Thread(target=pipe, args=(c, u), daemon=True).start()
        threading.Thread(target=pipe, args=(u, c), daemon=True).start()
''')


class TcpProxy:
    """A TCP proxy process on a fixed loopback port in front of ``upstream`` (an address
    such as ``http://127.0.0.1:PORT``; :attr:`url` is the same with the proxy's port).
    :meth:`kill` cuts the network: connections in flight are reset and new ones refused,
    as when a service or the route to it goes away, while the server and what it stores
    stay; :meth:`start` brings the route back on the same port."""

    def __init__(self, upstream: str) -> None:
        scheme, rest = upstream.split("://", 1) if "://" in upstream else ("", upstream)
        self.host, port = rest.rstrip("/").rsplit(":", 1)
        self.upstream_port = int(port)
        self.port = free_port()
        self.url = f"{scheme}://{self.host}:{self.port}" if scheme else f"{self.host}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> "TcpProxy":
        self.proc = subprocess.Popen([sys.executable, "-c", PROXY, str(self.port), self.host,
                                      str(self.upstream_port)])
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the proxy on port {self.port} did not start "
                                       f"(exit {self.proc.poll()})") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    stop = kill


WRITER = textwrap.dedent('''
    import json, os, sys, time
    from metafs.testing.faults import content
    d, log, stop, out, tag, size = sys.argv[1:7]
    errors, slowest, i = [], 0.0, 0
    with open(log, "a") as done:
        while not os.path.exists(stop):
            name = f"{tag}-{i:06d}"
            t0 = time.monotonic()
            try:
                with open(os.path.join(d, name), "wb") as f:
                    f.write(content(i, int(size)))
                    f.flush()
                    os.fsync(f.fileno())
                done.write(name + "\\n")
                done.flush()
            except OSError as exc:
                errors.append(f"{name}: {exc}")
            slowest = max(slowest, time.monotonic() - t0)
            i += 1
    json.dump({"errors": errors, "files": i, "slowest": slowest}, open(out, "w"))
''')

READER = textwrap.dedent('''
    import json, os, sys, time
    d, stop, out = sys.argv[1:4]
    errors, slowest, n = [], 0.0, 0
    while not os.path.exists(stop):
        t0 = time.monotonic()
        try:
            for name in os.listdir(d):
                try:
                    os.stat(os.path.join(d, name))
                except FileNotFoundError:
                    pass
            n += 1
        except OSError as exc:
            errors.append(str(exc))
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.05)
    json.dump({"errors": errors, "listings": n, "slowest": slowest}, open(out, "w"))
''')


class Workload:
    """Writers and a reader on one directory of a mount, until :meth:`finish`. Each writer
    writes files of ``size`` bytes."""

    def __init__(self, directory: Path, workdir: Path, writers: int = 1,
                 size: int = 3000) -> None:
        self.dir = directory
        self.workdir = workdir
        self.size = size
        self.stop_file = workdir / "stop"
        self.stop_file.unlink(missing_ok=True)
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        for w in range(writers):
            out = workdir / f"writer{w}.json"
            self.procs.append(("writer", subprocess.Popen(
                [sys.executable, "-c", WRITER, str(directory), str(self.log(w)),
                 str(self.stop_file), str(out), f"w{w}", str(size)]), out))
        out = workdir / "reader.json"
        self.procs.append(("reader", subprocess.Popen(
            [sys.executable, "-c", READER, str(directory), str(self.stop_file), str(out)]),
            out))

    def log(self, w: int) -> Path:
        return self.workdir / f"writer{w}.done"

    def written(self) -> int:
        return sum(self.written_each())

    def written_each(self) -> list[int]:
        """How many files each writer has fsynced so far."""
        return [len(self.log(w).read_text().split()) if self.log(w).exists() else 0
                for w in range(len(self.procs) - 1)]

    def wait_for_progress(self, files: int, timeout: float = 300.0) -> None:
        """Until the writers have fsynced ``files`` more files than now."""
        goal = self.written() + files
        deadline = time.monotonic() + timeout
        while self.written() < goal:
            for _, p, _ in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a workload program exited with {p.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the writers made no progress in {timeout:.0f} s")
            time.sleep(0.1)

    def finish(self, timeout: float = 300.0) -> dict[str, Any]:
        """Stop the programs; what they saw: {"writer": [...], "reader": [...]}."""
        self.stop_file.touch()
        seen: dict[str, Any] = {"writer": [], "reader": []}
        for kind, p, out in self.procs:
            p.wait(timeout)
            seen[kind].append(json.loads(out.read_text()))
        return seen

    def fsynced(self) -> list[tuple[str, bytes]]:
        """(name, expected bytes) of every file a writer fsynced."""
        got = []
        for w in range(len(self.procs) - 1):
            for name in self.log(w).read_text().split():
                got.append((name, content(int(name.split("-")[1]), self.size)))
        return got
