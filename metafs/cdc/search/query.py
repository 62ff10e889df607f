"""The search query language.

::

    bicycles>3 ext:jpg under:/datasets/coco "red car"
    (label=cat OR label=dog) AND NOT reviewed=true size>=1M mtime>2024-01-01
    exists:det.bbox owner:alice type:file name:*.png -draft

Terms are joined by AND unless ``OR`` is written; ``NOT`` (or a leading ``-``) negates;
parentheses group. A term is one of:

- ``KEY OP VALUE`` with OP one of ``= != < <= > >=`` (``:`` means ``=``): a comparison on a
  tag, or on a built-in field when KEY is one of :data:`FIELDS`. A tag key names a value
  in any ``user.*`` attribute: ``bicycles>3`` finds ``user.bicycles = 4``, ``user.tags =
  {"bicycles": 4}`` and ``user.labels = {"coco": {"bicycles": 4}}`` alike (the key matches
  the whole tag key or its last dotted parts, see :func:`key_matches`); naming more of the
  path narrows it: ``tags.bicycles>3`` only finds the second. Force a tag whose key is
  also a built-in field with ``tag.KEY`` (``tag.size>3`` is the tag ``size``).
  ``KEY:LOW..HIGH`` is an inclusive range.
- ``exists:KEY`` (or ``has:KEY``): the tag is present, or something nested under it
  (``exists:bbox`` finds ``user.det = {"bbox": {"w": 3}}``; see :func:`key_scopes`).
- ``under:DIR``: anywhere below the directory DIR.
- a word or a ``"quoted phrase"``: free text over names and textual tag values;
  ``name:WORD`` searches names only, ``name:*.jpg`` matches a glob on the name.

Values: a number (``3``, ``-2.5``, ``1e3``) compares numerically, ``true``/``false`` as
booleans, anything else (bare or ``"quoted"``) as a string; a quoted number is a string.
``size`` takes units (``10K``, ``1.5MiB``, ``2GB``); times (``mtime ctime atime btime``)
take ISO dates (``2024-05-01``, ``2024-05-01T12:00:00Z``), epoch seconds, or an age
(``7d``, ``12h``, ``30m``: that long ago). ``KEY!=V`` means the tag exists and no value
equals V. A malformed query raises :class:`QueryError` (errno EINVAL), which points at the
column of the problem.
"""

from __future__ import annotations

import grp
import pwd
import re
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Union

from ...client.search import QueryError as QueryError  # raised by the parser

OPS = ("=", "!=", "<", "<=", ">", ">=")

TYPES = {
    "file": "file", "f": "file", "regular": "file",
    "dir": "dir", "d": "dir", "directory": "dir",
    "symlink": "symlink", "l": "symlink", "link": "symlink",
    "fifo": "fifo", "p": "fifo", "socket": "socket", "s": "socket",
    "char": "char", "c": "char", "block": "block", "b": "block",
}

TIME_FIELDS = ("mtime", "ctime", "atime", "btime")
INT_FIELDS = ("size", "uid", "gid", "ino", "nlink", "parent")
FIELDS = ("name", "ext", "type", "owner", "group", "under") + INT_FIELDS + TIME_FIELDS
SORT_FIELDS = ("name", "ext", "type", "size", "uid", "gid", "ino", "nlink") + TIME_FIELDS


# ---------------------------------------------------------------------- the tree
@dataclass(frozen=True)
class And:
    items: tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Node", ...]


@dataclass(frozen=True)
class Not:
    item: "Node"


@dataclass(frozen=True)
class Text:
    """Free text (a word or phrase); ``field`` is "name" to search names only; ``prefix``
    when the last word ends in ``*``."""

    text: str
    field: str | None = None
    prefix: bool = False


@dataclass(frozen=True)
class Glob:
    """A shell glob on the file name (``*`` and ``?``)."""

    pattern: str


@dataclass(frozen=True)
class Field:
    """A comparison on a built-in field: name (exact), ext, type, size, uid, gid, ino,
    nlink, parent, or a time in nanoseconds."""

    name: str
    op: str
    value: Any


@dataclass(frozen=True)
class Tag:
    """A comparison on a tag: ``value`` is a float, bool or str; ``glob`` for a string
    value with wildcards (``=``/``!=`` only)."""

    key: str
    op: str
    value: Any
    glob: bool = False


@dataclass(frozen=True)
class Exists:
    key: str


@dataclass(frozen=True)
class Under:
    path: str


@dataclass(frozen=True)
class All:
    """Matches every document (an empty query)."""


Node = Union[And, Or, Not, Text, Glob, Field, Tag, Exists, Under, All]


# ---------------------------------------------------------------------- lexing
@dataclass
class _Tok:
    kind: str  # "(", ")", "AND", "OR", "NOT", "TERM", "PHRASE", "-"
    pos: int
    text: str = ""
    key: str = ""
    op: str = ""
    value: str = ""
    quoted: bool = False
    end: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


_KEY_RE = re.compile(r"[A-Za-z0-9_.\-@$#/+*?\[\]]+")
_OP_RE = re.compile(r"!=|<=|>=|=|<|>|:")
_SPECIAL = set('()"')
_OP_CHARS = set("<>=!:")
"""A bare value cannot start with these (``bicycles>>3``, ``label==cat`` are typos)."""


def _read_quoted(q: str, i: int) -> tuple[str, int]:
    """Read a "..." string starting at q[i] == '"'; returns (text, index after)."""
    start = i
    i += 1
    out = []
    while i < len(q):
        ch = q[i]
        if ch == "\\" and i + 1 < len(q):
            out.append(q[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise QueryError("unterminated quoted string", q, start)


def _lex(q: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    n = len(q)
    while i < n:
        ch = q[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "()":
            toks.append(_Tok(ch, i, end=i + 1))
            i += 1
            continue
        if ch == '"':
            text, j = _read_quoted(q, i)
            toks.append(_Tok("PHRASE", i, text=text, quoted=True, end=j))
            i = j
            continue
        if ch == "-" and i + 1 < n and not q[i + 1].isspace() and not q[i + 1].isdigit():
            toks.append(_Tok("-", i, end=i + 1))
            i += 1
            continue
        # A word, possibly KEY OP VALUE.
        start = i
        j = i
        while j < n and not q[j].isspace() and q[j] not in _SPECIAL and not _OP_RE.match(q, j):
            j += 1
        key = q[start:j]
        m = _OP_RE.match(q, j) if j < n else None
        if m and key:
            op = m.group(0)
            k = m.end()
            if k < n and q[k] == '"':
                value, k2 = _read_quoted(q, k)
                quoted = True
            else:
                k2 = k
                while k2 < n and not q[k2].isspace() and q[k2] not in "()":
                    k2 += 1
                value, quoted = q[k:k2], False
                if not value:
                    raise QueryError(f"expected a value after {op!r}: {key}{op} needs a "
                                     "value", q, k)
                if value[0] in _OP_CHARS:
                    raise QueryError(f"expected a value after {op!r}, not {value[0]!r} (quote "
                                     f"a value that starts with it: {key}{op}\"{value}\")",
                                     q, k)
            toks.append(_Tok("TERM", start, key=key, op=op, value=value, quoted=quoted,
                             end=k2))
            i = k2
            continue
        if m and not key:
            raise QueryError(f"{m.group(0)!r} needs a key before it (like bicycles>3)", q, j)
        if not key:
            raise QueryError(f"unexpected character {q[j]!r}", q, j)
        if key in ("AND", "OR", "NOT"):
            toks.append(_Tok(key, start, end=j))
        elif key in ("&&",):
            toks.append(_Tok("AND", start, end=j))
        elif key in ("||",):
            toks.append(_Tok("OR", start, end=j))
        else:
            toks.append(_Tok("TERM", start, text=key, end=j))
        i = j
    return toks


# ---------------------------------------------------------------------- parsing
class _Parser:
    def __init__(self, q: str, *, now_ns: int | None = None) -> None:
        self.q = q
        self.toks = _lex(q)
        self.i = 0
        self.now_ns = time.time_ns() if now_ns is None else now_ns

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def err(self, msg: str, tok: _Tok | None = None) -> QueryError:
        pos = tok.pos if tok is not None else len(self.q)
        return QueryError(msg, self.q, pos)

    def parse(self) -> Node:
        if not self.toks:
            return All()
        node = self.or_expr()
        tok = self.peek()
        if tok is not None:
            if tok.kind == ")":
                raise self.err("unbalanced ')'", tok)
            raise self.err("unexpected token", tok)
        return node

    def or_expr(self) -> Node:
        items = [self.and_expr()]
        while (tok := self.peek()) is not None and tok.kind == "OR":
            self.i += 1
            if self.peek() is None or self.peek().kind in (")", "OR", "AND"):  # type: ignore[union-attr]
                raise self.err("OR needs a term after it", self.peek())
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while (tok := self.peek()) is not None and tok.kind not in ("OR", ")"):
            if tok.kind == "AND":
                self.i += 1
                nxt = self.peek()
                if nxt is None or nxt.kind in (")", "OR", "AND"):
                    raise self.err("AND needs a term after it", nxt)
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.err("the query ends where a term was expected")
        if tok.kind in ("NOT", "-"):
            self.i += 1
            if self.peek() is None:
                raise self.err(f"{'NOT' if tok.kind == 'NOT' else '-'} needs a term after it")
            return Not(self.not_expr())
        return self.atom()

    def atom(self) -> Node:
        tok = self.peek()
        assert tok is not None
        if tok.kind == "(":
            self.i += 1
            if self.peek() is not None and self.peek().kind == ")":  # type: ignore[union-attr]
                raise self.err("empty parentheses", tok)
            node = self.or_expr()
            close = self.peek()
            if close is None or close.kind != ")":
                raise self.err("missing ')' for this '('", tok)
            self.i += 1
            return node
        if tok.kind == ")":
            raise self.err("unbalanced ')'", tok)
        if tok.kind in ("AND", "OR"):
            raise self.err(f"{tok.kind} needs a term before it", tok)
        self.i += 1
        if tok.kind == "PHRASE":
            if not tok.text.strip():
                raise self.err("empty phrase", tok)
            return Text(tok.text)
        if not tok.op:
            word = tok.text
            if word.endswith("*") and len(word) > 1 and "*" not in word[:-1] and "?" not in word:
                return Text(word[:-1], prefix=True)
            if "*" in word or "?" in word:
                return Glob(word)
            return Text(word)
        return self.term(tok)

    # -- KEY OP VALUE
    def term(self, tok: _Tok) -> Node:
        key, op, raw = tok.key, tok.op, tok.value
        vpos = tok.end - len(raw) - (2 if tok.quoted else 0)
        lk = key.lower()
        if lk in ("exists", "has"):
            if op != ":":
                raise self.err(f"use {lk}:KEY", tok)
            return Exists(self._tag_key(raw, tok))
        if op == ":" and not tok.quoted and ".." in raw:
            lo, _, hi = raw.partition("..")
            if not lo and not hi:
                raise QueryError("a range needs at least one bound (LOW..HIGH)", self.q, vpos)
            parts: list[Node] = []
            if lo:
                parts.append(self._cmp(key, ">=", lo, False, tok, vpos))
            if hi:
                parts.append(self._cmp(key, "<=", hi, False, tok, vpos + len(lo) + 2))
            return parts[0] if len(parts) == 1 else And(tuple(parts))
        return self._cmp(key, "=" if op == ":" else op, raw, tok.quoted, tok, vpos)

    def _tag_key(self, key: str, tok: _Tok) -> str:
        if key.lower().startswith("tag."):
            key = key.split(".", 1)[1]
        if not key or key.startswith(".") or key.endswith(".") or ".." in key:
            raise self.err(f"bad tag key {key!r}", tok)
        if "*" in key or "?" in key:
            raise self.err(f"tag keys cannot hold wildcards: {key!r}", tok)
        return key

    def _cmp(self, key: str, op: str, raw: str, quoted: bool, tok: _Tok, vpos: int) -> Node:
        lk = key.lower()
        if lk in FIELDS and not key.lower().startswith("tag."):
            return self._field(lk, op, raw, quoted, tok, vpos)
        k = self._tag_key(key, tok)
        if quoted:
            value: Any = raw
        elif raw == "true" or raw == "false":
            value = raw == "true"
        else:
            value = _number(raw)
            if value is None:
                value = raw
        glob = isinstance(value, str) and not quoted and ("*" in value or "?" in value)
        if glob and op not in ("=", "!="):
            raise QueryError("wildcards work only with = and !=", self.q, vpos)
        if isinstance(value, bool) and op not in ("=", "!="):
            raise QueryError("booleans compare only with = and !=", self.q, vpos)
        if op == "!=":
            return And((Exists(k), Not(Tag(k, "=", value, glob))))
        return Tag(k, op, value, glob)

    def _field(self, f: str, op: str, raw: str, quoted: bool, tok: _Tok, vpos: int) -> Node:
        def bad(msg: str) -> QueryError:
            return QueryError(msg, self.q, vpos)

        def eq_only() -> None:
            if op not in ("=", "!="):
                raise self.err(f"{f} compares only with : = or !=", tok)

        def neg(node: Node) -> Node:
            return Not(node) if op == "!=" else node

        if f == "under":
            eq_only()
            if not raw.startswith("/"):
                raise bad("under: needs an absolute directory path (like under:/datasets)")
            return neg(Under(raw))
        if f == "name":
            eq_only()
            if ("*" in raw or "?" in raw) and not quoted:
                return neg(Glob(raw))
            if tok.op == "=":
                return neg(Field("name", "=", raw))
            if raw.endswith("*") and len(raw) > 1:
                return neg(Text(raw[:-1], field="name", prefix=True))
            return neg(Text(raw, field="name"))
        if f == "ext":
            eq_only()
            return neg(Field("ext", "=", raw.lower().lstrip(".")))
        if f == "type":
            eq_only()
            t = TYPES.get(raw.lower())
            if t is None:
                raise bad(f"unknown type {raw!r}: use one of file, dir, symlink, fifo, socket, "
                          "char, block")
            return neg(Field("type", "=", t))
        if f in ("owner", "group"):
            col = "uid" if f == "owner" else "gid"
            v = _number(raw)
            if v is None or not float(v).is_integer():
                try:
                    v = (pwd.getpwnam(raw).pw_uid if f == "owner" else grp.getgrnam(raw).gr_gid)
                except KeyError:
                    raise bad(f"no {'user' if f == 'owner' else 'group'} named {raw!r}") from None
            return Field(col, op, int(v))
        if f in TIME_FIELDS:
            return Field(f, op, self._time(raw, bad))
        if f == "size":
            return Field("size", op, _size(raw, bad))
        v = _number(raw)
        if v is None or not float(v).is_integer():
            raise bad(f"{f} needs a whole number, not {raw!r}")
        return Field(f, op, int(v))

    def _time(self, raw: str, bad: Any) -> int:
        m = re.fullmatch(r"-?(\d+(?:\.\d+)?)(s|m|h|d|w|y)", raw)
        if m:
            mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
            return self.now_ns - int(float(m.group(1)) * mult[m.group(2)] * 1e9)
        if re.fullmatch(r"\d+(\.\d+)?", raw) and len(raw) >= 9:
            return int(float(raw) * 1e9)
        try:
            s = raw[:-1] + "+00:00" if raw.endswith("Z") else raw
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise bad(f"cannot read {raw!r} as a time: use 2024-05-01, 2024-05-01T12:00:00Z, "
                      "epoch seconds, or an age like 7d") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1e9)


_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _number(raw: str) -> float | None:
    if _NUM_RE.fullmatch(raw):
        return float(raw)
    return None


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4,
          "tb": 1000**4, "tib": 1024**4}


def _size(raw: str, bad: Any) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", raw)
    if not m or m.group(2).lower() not in _UNITS:
        raise bad(f"cannot read {raw!r} as a size: use a number with an optional unit "
                  "(K, M, G, T; KB for 1000; KiB for 1024)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def key_matches(key: str, tag_key: str) -> bool:
    """Whether the query key ``key`` names the indexed tag key ``tag_key``: the same key,
    or its last dotted parts (``bicycles`` names ``tags.bicycles``; ``tags.bicycles``
    names ``labels.tags.bicycles`` but not ``bicycles``; ``cycles`` names nothing of
    ``tags.bicycles``)."""
    return tag_key == key or tag_key.endswith("." + key)


def key_scopes(key: str, tag_key: str) -> set[str]:
    """The keys an ``exists:key`` term finds ``tag_key`` under: each prefix of
    ``tag_key`` (whole dotted parts) that ``key`` names by :func:`key_matches`
    (``exists:bbox`` finds ``det.bbox.w`` under ``det.bbox``)."""
    parts, want = tag_key.split("."), key.split(".")
    n = len(want)
    return {".".join(parts[:i + n]) for i in range(len(parts) - n + 1)
            if parts[i:i + n] == want}


def parse(query: str, *, now_ns: int | None = None) -> Node:
    """Parse a query string into a tree; raises :class:`QueryError` when malformed."""
    if not isinstance(query, str):
        raise QueryError("a query is a string")
    nul = query.find("\x00")
    if nul >= 0:  # no name, tag or word holds one; the index engines would choke on it
        raise QueryError("a query cannot hold a NUL character", query, nul)
    return _Parser(query, now_ns=now_ns).parse()


def parse_sort(sort: str | None) -> list[tuple[str, bool]]:
    """``"-size,name"`` -> [("size", True), ("name", False)] (True: descending)."""
    out: list[tuple[str, bool]] = []
    for part in (sort or "").split(","):
        part = part.strip()
        if not part:
            continue
        desc = part.startswith("-")
        name = part.lstrip("+-").lower()
        if name == "owner":
            name = "uid"
        if name not in SORT_FIELDS:
            raise QueryError(f"cannot sort by {name!r}: use one of {', '.join(SORT_FIELDS)} "
                             "(prefix - for descending)")
        out.append((name, desc))
    return out


def type_of_mode(mode: int) -> str:
    """The ``type`` field of an inode mode."""
    fmt = stat.S_IFMT(mode)
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char",
            stat.S_IFBLK: "block"}.get(fmt, "file")


def ext_of(name: str) -> str:
    """The ``ext`` field: the lower-cased suffix after the last dot ("" for none, and for
    dot-files like ``.bashrc``)."""
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        return ""
    return name[dot + 1:].lower()
