"""Running a mount: the client it uses, the FUSE loop, daemonizing and unmounting.

``metafs mount`` starts the mount as a detached child process (so no gRPC or namenode
thread ever crosses a fork) and returns once the kernel has answered the mount's INIT,
i.e. once the file system is usable, like mount(8). The child gets its settings through
an environment variable and reports readiness on a pipe.
"""

from __future__ import annotations

import dataclasses
import errno
import faulthandler
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import platformdirs

from ..client.client import Client
from ..config import Settings

log = logging.getLogger("metafs.fuse")

SETTINGS_ENV = "METAFS_MOUNT_SETTINGS"


def state_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    d = (Path(platformdirs.user_runtime_dir("metafs", appauthor=False)) if runtime
         else Path("/tmp") / f"metafs-{os.getuid()}") / "mounts"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = Path("/tmp") / f"metafs-{os.getuid()}" / "mounts"
        d.mkdir(parents=True, exist_ok=True)
    return d


def _key(mountpoint: str) -> str:
    return hashlib.sha1(os.path.realpath(mountpoint).encode()).hexdigest()[:16]


def pid_file(mountpoint: str) -> Path:
    return state_dir() / f"{_key(mountpoint)}.pid"


def default_log_file(mountpoint: str) -> Path:
    d = Path(platformdirs.user_log_dir("metafs", appauthor=False))
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = state_dir()
    return d / f"mount-{_key(mountpoint)}.log"


def make_client(settings: Settings) -> Client:
    """The mount's client: remote namenode over gRPC (TLS, client certificate and bearer
    token as configured, like any client) with the mount's (short) timeout and fast
    reconnects, or an embedded namenode on ``settings.data_dir``.

    A remote namenode that authenticates is asked who the mount is (WhoAmI), so a wrong
    token or certificate fails here, before anything is mounted. Every FUSE request then
    claims the ids of the process behind it: a mount used by several users needs a
    ``trusted`` identity; an untrusted one serves its own uid only."""
    if settings.namenode:
        from ..client.auth import identity_for_client, make_transport

        transport = make_transport(settings, timeout=settings.fuse_rpc_timeout)
        try:
            bound = identity_for_client(transport)
            if bound is not None:
                uid, gid, groups = bound
                return Client(settings=settings, transport=transport, uid=uid, gid=gid,
                              groups=groups)
            return Client(settings=settings, transport=transport)
        except BaseException:
            transport.close()
            raise
    return Client(settings=settings.with_(namenode=""))


def default_permissions(settings: Settings) -> bool:
    v = str(settings.fuse_default_permissions).strip().lower()
    if v in ("auto", ""):
        # a project mount acts as the project identity, whose ids the kernel's checks
        # against the local process's ids know nothing of: the namenode checks alone
        return bool(settings.fuse_allow_other) and not settings.fuse_project
    return v in ("1", "true", "yes", "on")


def fuse_options(settings: Settings) -> dict[str, Any]:
    # a comma would end the fsname option: several namenodes show as a;b
    source = (settings.namenode or settings.data_dir).replace(",", ";")
    opts: dict[str, Any] = {"fsname": f"metafs:{source}", "subtype": "metafs",
                            "foreground": True}
    if not settings.fuse_threads:
        opts["nothreads"] = True
    else:
        # a fixed set of worker threads: libfuse would otherwise start and end threads
        # with the load (and each new one pins a Python thread state: binding.py)
        opts["max_threads"] = settings.fuse_max_threads
        opts["max_idle_threads"] = settings.fuse_max_threads
    if settings.fuse_allow_other:
        opts["allow_other"] = True
    if default_permissions(settings):
        opts["default_permissions"] = True
    return opts


def run_mount(settings: Settings, mountpoint: str, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted (blocks)."""
    from .binding import MetafsFUSE
    from .ops import MetafsOperations
    from .project import open_project

    mountpoint = os.path.abspath(mountpoint)
    project = None
    try:
        client = make_client(settings)
        if settings.fuse_project:
            try:
                project = open_project(client, settings.fuse_project)
            except BaseException:
                client.close()
                raise
    except OSError as exc:
        # e.g. a wrong token: say so to `metafs mount` instead of "did not become ready"
        log.error("cannot mount %s: cannot use the namenode %s: %s", mountpoint,
                  settings.namenode or settings.data_dir, exc.strerror or exc)
        if ready_fd is None:
            raise
        _report(ready_fd, f"error {exc.errno or 5} {exc.strerror or exc}")
        return 1
    ops = MetafsOperations(client, settings, project)
    pf = pid_file(mountpoint)
    metrics = None
    if settings.metrics_port:  # Prometheus: per-operation counts and latencies, caches
        from ..metrics import serve_metrics

        try:
            metrics = serve_metrics(settings.metrics_port, settings.metrics_listen)
        except OSError as exc:  # the mount is still useful without its metrics
            log.warning("no metrics endpoint on %s:%d: %s", settings.metrics_listen,
                        settings.metrics_port, exc.strerror or exc)

    def ready() -> None:
        pf.write_text(f"{os.getpid()}\n")
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"ok\n")
                os.close(ready_fd)
            except OSError:
                pass
        log.info("metafs mounted on %s", mountpoint)

    try:
        MetafsFUSE(ops, mountpoint, settings, on_ready=ready, **fuse_options(settings))
    finally:
        try:
            ops.stop()
            if metrics is not None:
                metrics.shutdown()
        finally:
            client.close()
            try:
                if pf.read_text().strip() == str(os.getpid()):
                    pf.unlink()
            except OSError:
                pass
    return 0


def _report(ready_fd: int, line: str) -> None:
    try:
        os.write(ready_fd, line.replace("\n", " ").encode() + b"\n")
        os.close(ready_fd)
    except OSError:
        pass


def settings_to_env(settings: Settings) -> str:
    return json.dumps(dataclasses.asdict(settings))


def settings_from_env(value: str) -> Settings:
    return Settings(**json.loads(value))


def check_mountpoint(mountpoint: str) -> None:
    """Refuse a mount point that does not exist (ENOENT), cannot be looked up (its errno)
    or is not a directory (ENOTDIR)."""
    try:
        os.stat(mountpoint)
    except OSError as exc:
        what = " does not exist" if exc.errno == errno.ENOENT else f": {exc.strerror}"
        raise OSError(exc.errno, f"mount point{what}", mountpoint) from None
    if not os.path.isdir(mountpoint):
        raise NotADirectoryError(errno.ENOTDIR, "mount point is not a directory", mountpoint)


def spawn_mount(settings: Settings, mountpoint: str, *, log_file: str | None = None,
                timeout: float = 60.0) -> int:
    """Start a detached mount process; return its pid once the mount is usable."""
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    logf = Path(log_file) if log_file else default_log_file(mountpoint)
    r, w = os.pipe()
    env = dict(os.environ)
    env[SETTINGS_ENV] = settings_to_env(settings)
    with open(logf, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metafs.fuse.mount", mountpoint, str(w)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, pass_fds=(w,),
            start_new_session=True, close_fds=True)
    os.close(w)
    deadline = time.monotonic() + timeout
    got = b""
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 64)
            if not chunk:
                break
            got += chunk
            if got.startswith(b"ok"):
                return proc.pid
            if got.startswith(b"error ") and got.endswith(b"\n"):
                _, code, msg = got.decode(errors="replace").strip().split(" ", 2)
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                raise OSError(int(code), f"cannot mount: {msg} (namenode "
                              f"{settings.namenode or settings.data_dir})", mountpoint)
    finally:
        os.close(r)
    if proc.poll() is None:
        proc.terminate()
    tail = ""
    try:
        tail = logf.read_text(errors="replace")[-2000:]
    except OSError:
        pass
    raise OSError(5, f"the mount did not become ready (log: {logf}):\n{tail}", mountpoint)


def unmount(mountpoint: str, *, lazy: bool = False, wait: float = 30.0) -> None:
    """Unmount and wait for the mount process to finish its work (flushing buffered
    data and access events, closing the embedded namenode)."""
    mountpoint = os.path.abspath(mountpoint)
    pid = None
    try:
        pid = int(pid_file(mountpoint).read_text().strip())
    except (OSError, ValueError):
        pass
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u"] + (["-z"] if lazy else []) + [mountpoint] if tool else \
        ["umount"] + (["-l"] if lazy else []) + [mountpoint]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(16, f"unmount failed: {res.stderr.strip() or res.stdout.strip()}",
                      mountpoint)
    if pid is None:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.02)


def _child_main(argv: list[str]) -> int:
    """Entry point of the detached mount process: MOUNTPOINT READY_FD."""
    mountpoint, fd = argv[0], int(argv[1])
    settings = settings_from_env(os.environ.pop(SETTINGS_ENV))
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        os.chdir("/")
    except OSError:
        pass
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: dump stacks to the log
    # Block uploads and the FUSE threads share one interpreter lock: a shorter switch
    # interval bounds how long a FUSE request waits for it behind an upload thread.
    if settings.fuse_switch_interval_ms > 0:
        sys.setswitchinterval(settings.fuse_switch_interval_ms / 1000)
    return run_mount(settings, mountpoint, ready_fd=fd)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
