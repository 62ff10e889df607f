"""The contracts of metafs's pluggable parts, as test classes to subclass.

A block store, a metadata engine or a search back end written outside this package runs
the same suite as the ones inside it: subclass the class, provide the fixture that makes a
fresh instance of your implementation, and run pytest on the module (see
``docs/design.md``, "Writing an engine, a store or a search back end").

- :class:`BlockStoreTests`: the :class:`~metafs.blockstore.base.BlockStore` contract
  (fixture ``store``); :class:`BlockIOTests` is its ranged-read and whole-block-write
  part, which a view such as :class:`~metafs.blockstore.presigned.PresignedView` offers.
- :class:`EngineTests`: POSIX namespace semantics through the client over a metadata
  engine, on the in-process and the gRPC transport (fixture ``engine_settings``).
- :class:`SearchBackendTests`: search results against a reference evaluation of the
  namespace (method ``make_backend``).

Needs pytest (``pip install 'metafs-ml[testing]'``); nothing else in metafs imports this package.
"""

from __future__ import annotations

try:
    import pytest
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("metafs.testing needs pytest: pip install 'metafs-ml[testing]'") from exc

# plain asserts in the suites report their operands, as in a test module
pytest.register_assert_rewrite("metafs.testing.blockstore", "metafs.testing.changelog",
                               "metafs.testing.engine", "metafs.testing.search")

from .blockstore import BlockIOTests, BlockStoreTests  # noqa: E402
from .engine import ClientFactory, EngineTests  # noqa: E402
from .search import SearchBackendTests  # noqa: E402

__all__ = ["BlockIOTests", "BlockStoreTests", "ClientFactory", "EngineTests",
           "SearchBackendTests"]
