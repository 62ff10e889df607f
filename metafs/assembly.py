"""A namenode with the parts metafs runs it with: what ``metafs serve`` and an embedded
client (``Client(data_dir=...)``) start.

The namenode package imports nothing above it; this module, which sits above the
namenode, the changelog consumers and the operations tools, hands it its extensions:

- the Search call (with its indexer when ``serve_index`` is set), from :mod:`metafs.cdc`;
- the Provenance call, with the lineage graph of this file system that it keeps;
- Prometheus metrics of every RPC, and the changelog head while the namenode is open;
- TLS, mutual TLS and caller authentication on its gRPC server;
- projects (:mod:`metafs.namenode.projects`) and their Projects call.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .namenode import projects
from .namenode.server import GrpcServer, Namenode
from .namenode.server import serve_grpc as _serve_grpc


class _MetricsRegistration:
    """Keeps a namenode's changelog head in the metrics until it closes."""

    def __init__(self, namenode: Namenode) -> None:
        self.ns = namenode.ns

    def close(self) -> None:
        from .metrics import forget

        forget(self.ns)


def _attach_search(namenode: Namenode, *, embedded: bool = False) -> Any:
    from .cdc.search import service

    return service.attach(namenode, embedded=embedded)


def _attach_provenance(namenode: Namenode) -> Any:
    from .cdc.provenance import service

    return service.attach(namenode)


def build_namenode(settings: Settings, *, background: bool = True,
                   embedded: bool = False) -> Namenode:
    """A namenode on ``settings``' database with projects, the Search and Provenance
    calls and metrics attached. ``embedded``: the in-process namenode of
    ``Client(data_dir=...)``, which starts its search indexer with its first Search call
    (setting ``search_in_process``)."""
    def search(nn: Namenode) -> Any:
        return _attach_search(nn, embedded=embedded)

    return Namenode(settings, background=background,
                    extensions=(projects.attach, search, _attach_provenance,
                                _MetricsRegistration))


def serve_grpc(namenode: Namenode, listen: str | None = None) -> GrpcServer:
    """Serve ``namenode`` over gRPC with metrics and authentication (TLS as configured)."""
    from .ops import auth
    from .metrics import instrument

    return _serve_grpc(namenode, listen, wrap_handlers=instrument,
                       install=(auth.install, projects.install),
                       bind=auth.bind)
