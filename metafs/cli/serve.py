"""``metafs serve``: run a namenode, with its TLS, authentication and metrics flags."""

from __future__ import annotations

import argparse
import errno
import gc
import os
import signal
import socket
import threading
from typing import Any

from ..config import Settings
from .common import Common, add_common, log, settings_from, setup_logging


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("serve", help="run a namenode")
    add_common(sp)
    sp.add_argument("--data", dest="data_dir", help="data directory: SQLite file and "
                    "local block directory inside it (the embedded default)")
    sp.add_argument("--db", dest="db_url", help="sqlite:///PATH or postgresql://USER@HOST/DB")
    sp.add_argument("--blocks", dest="blocks_url", help="file:///PATH or s3://BUCKET/PREFIX")
    sp.add_argument("--listen", help="HOST:PORT to serve gRPC on")
    sp.add_argument("--ready-file", help="write the bound address here once serving")
    sp.add_argument("--index", dest="serve_index", action=argparse.BooleanOptionalAction,
                    default=None, help="run the search indexer in this process and answer "
                    "searches of remote clients from it (default: on for a SQLite database "
                    "with the embedded index)")
    sp.add_argument("--search-dir", dest="search_dir", help="the search index directory "
                    "(default: search/ in the data directory)")
    add_serve_flags(sp)
    sp.set_defaults(func=cmd_serve)


def add_serve_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("security")
    g.add_argument("--tls-cert", help="PEM certificate to serve TLS with")
    g.add_argument("--tls-key", help="PEM key of --tls-cert")
    g.add_argument("--tls-ca", help="PEM CA that signs client certificates (mutual TLS)")
    g.add_argument("--tls-client-auth", action="store_const", const=True, default=None,
                   help="require client certificates signed by --tls-ca (mutual TLS)")
    g.add_argument("--auth-mode", choices=("none", "token", "cert", "any"),
                   help="how callers prove who they are (default none: claims are trusted)")
    g.add_argument("--auth-file", help="TOML identity table: tokens and certificate names "
                   "mapped to uid, gid and groups")
    g.add_argument("--insecure", action="store_const", const=True, default=None,
                   help="serve beyond loopback without authentication: every caller's "
                   "claimed uid is trusted (without it such a namenode refuses to start)")
    g = sp.add_argument_group("operations")
    g.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    g.add_argument("--metrics-listen", help="address for the metrics endpoint")


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("tls_cert", "tls_key", "tls_ca", "tls_client_auth", "auth_mode", "auth_file",
            "insecure", "metrics_port", "metrics_listen")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def start_serve_extras(nn: Any, s: Settings) -> Any:
    """Start the metrics endpoint of `metafs serve` when ``metrics_port`` is set."""
    if not s.metrics_port:
        return None
    from ..metrics import serve_metrics

    srv = serve_metrics(s.metrics_port, s.metrics_listen)
    log.info("metrics on http://%s:%d/metrics", s.metrics_listen, srv.server_port)
    return srv


def _bind_error(listen: str, what: str = "cannot listen") -> OSError | None:
    """Why ``listen`` cannot be bound (address in use, not available, not allowed), found
    by binding it with a plain socket; None when it can."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or listen.startswith("unix:"):
        return None  # not a TCP address: gRPC judges it
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            # as a server binds: a port whose old connections linger (TIME_WAIT) is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as exc:
        return OSError(exc.errno, f"{what}: {exc.strerror}", listen)
    except IndexError:
        return OSError(errno.EADDRNOTAVAIL, f"{what}: no such address", listen)
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from ..assembly import build_namenode, serve_grpc
    from ..ops.auth import check_listen

    s = settings_from(args, **serve_overrides(args))
    if args.serve_index is None:
        from ..cdc.search.service import serve_index_default

        s = s.with_(serve_index=serve_index_default(s))
    setup_logging(s.log_level, args.log_format)
    check_listen(s.listen, s)  # before anything starts: beyond loopback, auth or --insecure
    # addresses checked before anything starts (gRPC's own report is a log line)
    unusable = _bind_error(s.listen)
    if unusable is None and s.metrics_port:
        unusable = _bind_error(f"{s.metrics_listen}:{s.metrics_port}", "metrics endpoint")
    if unusable is not None:
        raise unusable
    nn = build_namenode(s)
    try:
        server = serve_grpc(nn, s.listen)
    except RuntimeError as exc:  # gRPC says only "Failed to bind"
        nn.close()
        raise _bind_error(s.listen) or OSError(errno.EADDRNOTAVAIL, "cannot listen",
                                               s.listen) from exc
    try:
        start_serve_extras(nn, s)  # Prometheus metrics endpoint, when configured
    except OSError as exc:
        server.stop(grace=None)
        nn.close()
        raise OSError(exc.errno, f"metrics endpoint: {exc.strerror}",
                      f"{s.metrics_listen}:{s.metrics_port}") from exc
    # Everything loaded so far lives as long as the process: keep it out of the cyclic
    # collector's full scans, which otherwise revisit it on every request-heavy minute.
    gc.freeze()
    db = s.effective_db_url
    shown_db = db.split("@")[-1] if "@" in db else db
    log.info("metafs namenode started on %s (db %s, blocks %s, pid %d)", server.address,
             shown_db, s.effective_blocks_url, os.getpid())
    if args.ready_file:
        with open(args.ready_file, "w") as fh:
            fh.write(server.address)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(1.0):
        pass
    server.stop(grace=5.0)
    nn.close()
    log.info("metafs namenode on %s stopped", server.address)
    return 0
