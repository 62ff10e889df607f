"""metafs: a POSIX-like file system for machine-learning teams.

Metadata lives in a transactional SQL database behind a gRPC namenode, small files inline
in that database, large files as blocks in S3 or a local directory, and every committed
change on a changelog that feeds search and provenance.
"""

from .client import BulkFile, Client
from .cdc.provenance.runs import run  # provenance: with metafs.run("train", params=...):

__all__ = ["BulkFile", "Client", "run"]
__version__ = "0.1.0"
