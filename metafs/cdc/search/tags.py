"""Turning ``user.*`` extended attributes into typed tags.

A value that parses as JSON keeps its types: numbers, strings, booleans and null; arrays
give one tag per element under the same key; objects nest as dotted keys
(``user.det = {"bbox": {"w": 3}}`` gives ``det.bbox.w = 3``). A value that is not JSON
(or not UTF-8) is indexed as text under the attribute's own key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

USER = "user."
MAX_TAGS_PER_XATTR = 10_000
"""A single attribute expanding into more tags than this is indexed as text instead."""

# Kinds of tag values.
NUM, STR, BOOL, NULL, TEXT = "n", "s", "b", "z", "t"


@dataclass(frozen=True, slots=True)
class Tag:
    """One typed value of one (possibly dotted) key."""

    key: str
    kind: str
    num: float | None
    str: str | None

    def value(self) -> Any:
        if self.kind == NUM:
            assert self.num is not None
            return int(self.num) if self.num.is_integer() and abs(self.num) < 2**53 else self.num
        if self.kind == BOOL:
            return bool(self.num)
        if self.kind == NULL:
            return None
        return self.str


def tag_key(xattr_name: str) -> str | None:
    """The tag key of an xattr name, or None when the attribute is not a ``user.`` one."""
    if not xattr_name.startswith(USER) or len(xattr_name) == len(USER):
        return None
    return xattr_name[len(USER):]


def flatten(xattr_name: str, value: bytes) -> list[Tag]:
    """The typed tags of one ``user.*`` attribute value (empty for other namespaces)."""
    key = tag_key(xattr_name)
    if key is None:
        return []
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return [Tag(key, TEXT, None, value.decode("utf-8", "replace"))]
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return [Tag(key, TEXT, None, text)]
    out: list[Tag] = []
    try:
        for t in _walk(key, doc, 0):
            out.append(t)
            if len(out) > MAX_TAGS_PER_XATTR:
                return [Tag(key, TEXT, None, text)]
    except RecursionError:
        return [Tag(key, TEXT, None, text)]
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _walk(key: str, v: Any, depth: int) -> Iterator[Tag]:
    if depth > 32:
        raise RecursionError
    if isinstance(v, bool):
        yield Tag(key, BOOL, 1.0 if v else 0.0, "true" if v else "false")
    elif isinstance(v, (int, float)):
        f = float(v)
        if math.isfinite(f):
            yield Tag(key, NUM, f, None)
        else:
            yield Tag(key, TEXT, None, str(v))
    elif isinstance(v, str):
        yield Tag(key, STR, None, v)
    elif v is None:
        yield Tag(key, NULL, None, None)
    elif isinstance(v, list):
        for item in v:
            yield from _walk(key, item, depth + 1)
    elif isinstance(v, dict):
        if not v:
            yield Tag(key, NULL, None, None)
        for k, item in v.items():
            yield from _walk(f"{key}.{k}" if k else key, item, depth + 1)


def collect(tags: list[tuple[str, str, float | None, str | None]]) -> dict[str, Any]:
    """Rows of (key, kind, num, str) back into a dict: one value, or a list of several."""
    out: dict[str, Any] = {}
    for key, kind, num, s in tags:
        v = Tag(key, kind, num, s).value()
        if key in out:
            cur = out[key]
            if isinstance(cur, list) and getattr(cur, "_multi", False):
                cur.append(v)
            else:
                lst = _Multi([cur, v])
                out[key] = lst
        else:
            out[key] = v
    return {k: (list(v) if isinstance(v, _Multi) else v) for k, v in out.items()}


class _Multi(list):  # type: ignore[type-arg]
    _multi = True
