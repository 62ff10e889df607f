"""The metafs client library."""

from .client import BulkFile, Client, DirEntry, to_stat
from .transport import GrpcTransport, LocalTransport, Transport

__all__ = ["BulkFile", "Client", "DirEntry", "GrpcTransport", "LocalTransport", "Transport",
           "to_stat"]
