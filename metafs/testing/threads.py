"""Running a test's workers on threads at once."""

from __future__ import annotations

import threading
from typing import Callable


def run_threads(n: int, fn: Callable[[int], None]) -> None:
    """Run ``fn(0)`` ... ``fn(n - 1)`` on ``n`` threads at once, wait for all of them, and
    raise the first exception any of them raised (an assertion included)."""
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
