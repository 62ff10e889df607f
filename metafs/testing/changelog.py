"""A changelog reader for concurrency tests: it follows the changelog through several
readers in turn (e.g. one per namenode) and checks that every record follows the one
before it, with no gap and no reordering."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

from ..proto import metafs_pb2 as pb

#: one read of the changelog: records after a position -> (records, head)
Read = Callable[[int], tuple[Sequence[pb.ChangeRecord], int]]


class OrderedReader(threading.Thread):
    """Reads the changelog after ``start``, using ``reads`` in turn, until :meth:`finish`
    is called and it has read to the head; ``seen`` holds the records in order."""

    def __init__(self, reads: Sequence[Read], start: int) -> None:
        super().__init__(daemon=True)
        self.reads, self.start_after = list(reads), start
        self.seen: list[pb.ChangeRecord] = []
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            after, k = self.start_after, 0
            while True:
                finishing = self._done.is_set()
                recs, head = self.reads[k % len(self.reads)](after)
                k += 1
                for r in recs:
                    assert r.seq == after + 1, f"gap or reorder: {after} then {r.seq}"
                    after = r.seq
                    self.seen.append(r)
                if finishing and not recs and after >= head:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self, timeout: float = 120) -> list[pb.ChangeRecord]:
        """Let it read to the head and stop; the records it read, or what it raised."""
        self._done.set()
        self.join(timeout)
        assert not self.is_alive(), "the changelog reader did not reach the head"
        if self.error is not None:
            raise self.error
        return self.seen
