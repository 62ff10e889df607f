"""Fixtures for the block store tests: a real moto S3 server on a loopback port, and a real
HTTP proxy in front of it that can be told to fail or stall requests."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto S3 server (real HTTP) on a loopback port; credentials in the environment."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    import tempfile

    # the default block cache ("auto") lives in the user's cache dir: keep tests' blocks
    # out of the real one
    cache_home = tempfile.mkdtemp(prefix="mfs-cache")
    saved = {k: os.environ.get(k) for k in [*CREDS, "XDG_CACHE_HOME"]}
    os.environ.update(CREDS)
    os.environ["XDG_CACHE_HOME"] = cache_home
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        import shutil

        shutil.rmtree(cache_home, ignore_errors=True)


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"mfs-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


class FaultProxy:
    """An HTTP proxy in front of an S3 endpoint. ``fail(n, status)`` answers the next ``n``
    requests with ``status``; ``stall(n, seconds)`` holds the next ``n`` responses back for
    ``seconds``; ``fail_always(status)`` fails every request until ``heal()``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.split("://", 1)[1]
        self._lock = threading.Lock()
        self._fail_left = 0
        self._status = 503
        self._always = 0
        self._stall_left = 0
        self._stall_s = 0.0
        self.requests = 0
        self.failed = 0
        self.stalled = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                action, status, delay = proxy._decide()
                if action == "fail":
                    msg = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                           + (b"SlowDown" if status == 503 else b"InternalError")
                           + b"</Code><Message>injected</Message></Error>")
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if action == "stall":
                    time.sleep(delay)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                length = str(len(data))
                for k, v in resp.getheaders():
                    if k.lower() == "content-length" and self.command == "HEAD":
                        length = v  # HEAD: the size of the object, not of this body
                    if k.lower() in ("transfer-encoding", "connection", "content-length"):
                        continue
                    self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _decide(self) -> tuple[str, int, float]:
        with self._lock:
            self.requests += 1
            if self._always:
                self.failed += 1
                return "fail", self._always, 0.0
            if self._fail_left:
                self._fail_left -= 1
                self.failed += 1
                return "fail", self._status, 0.0
            if self._stall_left:
                self._stall_left -= 1
                self.stalled += 1
                return "stall", 0, self._stall_s
            return "pass", 0, 0.0

    def fail(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._fail_left, self._status = n, status

    def stall(self, n: int, seconds: float) -> None:
        with self._lock:
            self._stall_left, self._stall_s = n, seconds

    def fail_always(self, status: int = 500) -> None:
        with self._lock:
            self._always = status

    def heal(self) -> None:
        with self._lock:
            self._always = self._fail_left = self._stall_left = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(moto_url: str) -> Iterator[FaultProxy]:
    p = FaultProxy(moto_url)
    try:
        yield p
    finally:
        p.close()
