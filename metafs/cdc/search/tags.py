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
    return flatten_key(key, value)


def flatten_key(key: str, value: bytes) -> list[Tag]:
    """The typed tags of an attribute value under the tag key ``key`` (its name without
    ``user.``)."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return [Tag(key, TEXT, None, value.decode("utf-8", "replace"))]
    try:
        doc = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return [Tag(key, TEXT, None, text)]
    # Scalars (most tags) without the walk.
    if doc is True or doc is False:
        return [Tag(key, BOOL, 1.0 if doc else 0.0, "true" if doc else "false")]
    if type(doc) is str:
        return [Tag(key, STR, None, doc)]
    if type(doc) is int or type(doc) is float:
        f = _finite(doc)
        if f is not None:
            return [Tag(key, NUM, f, None)]
        return [Tag(key, TEXT, None, str(doc))]
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


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _finite(v: int | float) -> float | None:
    """``v`` as a finite float, or None (an integer too large for a double is text)."""
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _walk(key: str, v: Any, depth: int) -> Iterator[Tag]:
    if depth > 32:
        raise RecursionError
    if isinstance(v, bool):
        yield Tag(key, BOOL, 1.0 if v else 0.0, "true" if v else "false")
    elif isinstance(v, (int, float)):
        f = _finite(v)
        if f is not None:
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
