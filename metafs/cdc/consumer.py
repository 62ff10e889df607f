"""The consumer framework: follow the changelog into a sink, durably and in order.

A :class:`Sink` owns its state *and* its checkpoint, and commits both together: applying
a batch of records and moving the checkpoint to the batch's last position is one atomic
step. That gives the guarantees every consumer needs without any help from the namenode:

- ordered: records are applied strictly in changelog order, batch after batch;
- idempotent: a record at or below the checkpoint is never applied again (the sink skips
  it), so a re-read after a crash or a retry is harmless;
- resumable: after a crash (even SIGKILL mid-batch) the sink is exactly at its last
  committed checkpoint and the consumer reads on from there;
- rebuildable: :meth:`Consumer.rebuild` drops the sink's state and replays from position 0.

:class:`Consumer` drives one sink from one :class:`~metafs.cdc.source.ChangelogSource`,
either step by step (:meth:`Consumer.step`, :meth:`Consumer.catch_up`) or in a background
thread (:meth:`Consumer.start`), and reports its position and lag (:meth:`Consumer.status`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol, Sequence

from ..proto import metafs_pb2 as pb
from .source import ChangelogSource, source_for

log = logging.getLogger("metafs.cdc")

RecordHook = Callable[[pb.ChangeRecord], None]


class Sink(Protocol):
    """The state a consumer builds from the changelog, with its own checkpoint."""

    def position(self) -> int:
        """The last changelog position whose effects are durably applied."""
        ...

    def apply(self, records: Sequence[pb.ChangeRecord], upto: int,
              on_record: RecordHook | None = None) -> None:
        """Apply ``records`` (in order; those at or below :meth:`position` are skipped) and
        move the checkpoint to ``upto``, atomically: after a crash either all of it or none
        of it is visible. ``on_record`` is called after each record is applied inside the
        uncommitted step (tests use it to inject crashes)."""
        ...

    def reset(self) -> None:
        """Drop all state and set the checkpoint to 0 (for a rebuild by replay)."""
        ...

    def close(self) -> None:
        ...

    # Optional: ``caught_up()``, called by the consumer whenever a step leaves the
    # checkpoint at the changelog head (a sink that defers work during a long replay, like
    # the search index building its query indexes, does it there).


def apply_checkpointed(records: Sequence[pb.ChangeRecord], position: int, upto: int,
                       apply_one: RecordHook, on_record: RecordHook | None = None) -> int:
    """The body of a :meth:`Sink.apply` step, run by the sink inside its transaction:
    apply the records past the checkpoint ``position`` in order (those at or below it
    are already applied), calling ``on_record`` after each. Returns the checkpoint the
    step leaves, which the sink stores in the same transaction."""
    for r in records:
        if r.seq <= position:
            continue
        apply_one(r)
        if on_record is not None:
            on_record(r)
    return max(upto, position)


@dataclass
class ConsumerStatus:
    """Where a consumer is, for ``metafs indexer --status`` and monitoring."""

    name: str
    position: int
    head: int
    lag_records: int
    lag_seconds: float
    applied: int
    batches: int
    running: bool
    last_error: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SourceReset(RuntimeError):
    """The changelog is behind the consumer's checkpoint: the namenode's database was
    replaced. The consumer must be rebuilt."""


class Consumer:
    """Follows a changelog into a :class:`Sink`."""

    def __init__(self, source: Any, sink: Sink, *, name: str = "consumer",
                 batch: int = 5000, wait_ms: int = 200, auto_rebuild: bool = True,
                 on_record: RecordHook | None = None) -> None:
        self.source: ChangelogSource = source_for(source)
        self.sink = sink
        self.name = name
        self.batch = batch
        self.wait_ms = wait_ms
        self.auto_rebuild = auto_rebuild
        self.on_record = on_record
        self._cond = threading.Condition()
        self._position = sink.position()
        self._head = self._position
        # (position, ts_ns) of the oldest committed record after that position, once known
        self._pending: tuple[int, int] | None = None
        self._applied = 0
        self._batches = 0
        self._last_error = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._step_lock = threading.Lock()

    # ------------------------------------------------------------------ driving
    def step(self, wait_ms: int = 0, upto: int | None = None) -> int:
        """Read one batch after the checkpoint (not past ``upto``) and apply it; returns
        the records applied."""
        with self._step_lock:
            after = self.sink.position()
            want = self.batch if upto is None else max(1, min(self.batch, upto - after))
            recs, head = self.source.read(after, want, wait_ms)
            if head < after:
                if not self.auto_rebuild:
                    raise SourceReset(f"changelog head {head} is behind checkpoint {after}")
                log.warning("%s: changelog head %d is behind checkpoint %d: rebuilding",
                            self.name, head, after)
                self.sink.reset()
                after = 0
                recs, head = self.source.read(0, self.batch, 0)
            got = recs
            recs = [r for r in got if r.seq > after and (upto is None or r.seq <= upto)]
            if recs:
                self.sink.apply(recs, recs[-1].seq, self.on_record)
                pos = recs[-1].seq
            else:
                pos = after
            left = [r for r in got if r.seq > pos]  # read, not applied (past ``upto``)
            with self._cond:
                self._position = pos
                self._head = max(head, pos)
                self._applied += len(recs)
                self._batches += 1 if recs else 0
                if left:
                    self._pending = (pos, left[0].ts_ns)
                elif self._pending is not None and self._pending[0] != pos:
                    self._pending = None
            if pos >= head:
                hook = getattr(self.sink, "caught_up", None)
                if hook is not None:
                    hook()
            with self._cond:
                self._cond.notify_all()
            return len(recs)

    def catch_up(self, target: int | None = None) -> int:
        """Apply records until the checkpoint reaches ``target`` (default: the head as of
        now). Returns the number of records applied."""
        goal = self.source.head() if target is None else target
        n = 0
        while self.sink.position() < goal:
            got = self.step(upto=goal)
            n += got
            if not got and self.sink.position() < goal:
                # Nothing more to read yet (target beyond the head): wait for commits.
                n += self.step(wait_ms=self.wait_ms, upto=goal)
        return n

    def rebuild(self) -> int:
        """Drop the sink's state and replay the whole changelog up to the current head."""
        with self._step_lock:
            self.sink.reset()
            with self._cond:
                self._position = 0
        return self.catch_up()

    # ------------------------------------------------------------------ background
    def start(self) -> "Consumer":
        """Follow the changelog in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"metafs-cdc-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Follow the changelog in this thread until :meth:`stop` (errors are retried with
        backoff; the sink's atomic apply makes the retry exact)."""
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self.step(wait_ms=self.wait_ms)
                backoff = 0.05
                if self._last_error:
                    self._last_error = ""
            except Exception as exc:  # noqa: BLE001 - a consumer must keep going
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: %s (retrying in %.2fs)", self.name, self._last_error, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
        self._thread = None

    def close(self) -> None:
        self.stop()
        self.sink.close()

    # ------------------------------------------------------------------ reporting
    def wait_for(self, position: int, timeout: float | None = None) -> bool:
        """Block until the checkpoint reaches ``position``. When no background thread is
        running, catch up in this thread instead. True once reached."""
        if self._thread is None or not self._thread.is_alive():
            if self.sink.position() < position:
                self.catch_up(position)
            return self.sink.position() >= position
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._position < position:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
            return True

    def position(self) -> int:
        return self._position

    def _pending_since_ns(self, pos: int) -> int:
        """The commit time (ts_ns) of the oldest committed record after ``pos``, read from
        the source once per checkpoint position; 0 when there is none or it is unknown."""
        cached = self._pending
        if cached is not None and cached[0] == pos:
            return cached[1]
        try:
            recs, _ = self.source.read(pos, 1, 0)
        except Exception as exc:  # noqa: BLE001 - status must not fail
            self._last_error = f"{type(exc).__name__}: {exc}"
            return 0
        ts = int(recs[0].ts_ns) if recs else 0
        if recs:
            self._pending = (pos, ts)
        return ts

    def status(self, *, refresh_head: bool = True) -> ConsumerStatus:
        """Position, head and lag: ``lag_records`` committed records not yet applied, and
        ``lag_seconds`` since the oldest of them was committed (0 when caught up)."""
        head = self._head
        if refresh_head:
            try:
                head = max(self.source.head(), self._position)
            except Exception as exc:  # noqa: BLE001 - status must not fail
                self._last_error = f"{type(exc).__name__}: {exc}"
        pos = self._position
        lag_s = 0.0
        if head > pos:
            since = self._pending_since_ns(pos)
            if since:
                lag_s = max(0.0, (time.time_ns() - since) / 1e9)
        return ConsumerStatus(
            name=self.name, position=pos, head=head,
            lag_records=max(0, head - pos), lag_seconds=lag_s,
            applied=self._applied, batches=self._batches,
            running=self._thread is not None and self._thread.is_alive(),
            last_error=self._last_error)
