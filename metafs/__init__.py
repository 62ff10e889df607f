"""metafs: a POSIX-like file system for machine-learning teams.

Metadata lives in a transactional SQL database behind a gRPC namenode, small files inline
in that database, large files as blocks in S3 or a local directory, and every committed
change on a changelog that feeds search and provenance.
"""

from .config import tune_grpc
from .version import __version__  # noqa: F401 - metafs.__version__

tune_grpc()  # before anything imports grpc

from .client import BulkFile, Client  # noqa: E402
from .client import client as _client_module  # noqa: E402


def _start_embedded_namenode(settings):  # type: ignore[no-untyped-def]
    """The in-process namenode of ``Client(data_dir=...)``, imported on first use."""
    from .assembly import build_namenode

    return build_namenode(settings, embedded=True)


_client_module.start_embedded_namenode = _start_embedded_namenode
from .cdc.provenance.runs import run  # noqa: E402 - provenance: with metafs.run("train", params=...):

__all__ = ["BulkFile", "Client", "run"]
