"""A local HTTP server that answers as Elasticsearch would, and records every request.

It implements what the metafs Elasticsearch back end uses: the product check, index
templates, index creation, ``_bulk`` with external versioning (409 on a version that is not
higher), ``_search`` over the query DSL subset the back end emits (bool, term, terms,
range, prefix, wildcard, nested, multi_match phrase/phrase_prefix, match_all/none),
sorting and paging. Like a real server of its ``version``, it refuses (400
``media_type_header_exception``) a request whose ``Accept`` or ``Content-Type`` asks for a
``compatible-with`` major version it does not serve (its own and the one before), or whose
two headers disagree, and names its version and product in its answers. Faults can be injected: ``down`` (every request gets a 503 with no
product header), and ``fail_items`` (a number of bulk items answered 429, once each).
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)
_COMPATIBLE = re.compile(r"application/vnd\.elasticsearch\+[\w-]+\s*;.*?compatible-with\s*=\s*(\d+)")

SERVER_VERSION = "8.19.24"
"""The server docker-compose.yml runs."""


def media_type_error(major: int, accept: str, content_type: str,
                     has_body: bool) -> str | None:
    """Why a server of ``major`` refuses these headers (None: it accepts them), following
    Elasticsearch's REST API compatibility rules: a requested ``compatible-with`` version
    must be the server's major or the one before, and with a body, Content-Type and Accept
    must both ask for the same version or neither."""
    served = (major, major - 1)
    m_acc, m_ct = _COMPATIBLE.search(accept or ""), _COMPATIBLE.search(content_type or "")
    acc = int(m_acc.group(1)) if m_acc else None
    ct = int(m_ct.group(1)) if m_ct and has_body else None
    if acc is not None and acc not in served:
        return (f"Accept version must be either version {major} or {major - 1}, but found "
                f"{acc}. Accept={accept}")
    if ct is not None and ct not in served:
        return (f"Content-Type version must be either version {major} or {major - 1}, but "
                f"found {ct}. Content-Type={content_type}")
    if has_body and (acc is None) != (ct is None):
        return ("A compatible version is required on both Content-Type and Accept headers if "
                "either one has requested a compatible version. "
                f"Accept={accept}, Content-Type={content_type}")
    if has_body and acc != ct:
        return ("Content-Type and Accept headers have to be the same version. "
                f"Accept={accept}, Content-Type={content_type}")
    return None


def _words(s: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(s)]


def _media_type_exception(reason: str) -> dict[str, Any]:
    cause = {"type": "media_type_header_exception",
             "reason": "Invalid media-type value on headers [Accept, Content-Type]"}
    return {"error": {"root_cause": [cause], **cause,
                      "caused_by": {"type": "status_exception", "reason": reason}},
            "status": 400}


class FakeES:
    def __init__(self, version: str = SERVER_VERSION) -> None:
        self.version = version
        self.requests: list[tuple[str, str, str]] = []
        self.templates: dict[str, Any] = {}
        self.indices: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        self.down = False
        self.fail_items = 0
        self.lock = threading.Lock()
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _body(self) -> str:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n).decode() if n else ""

            def _send(self, status: int, obj: Any, product: bool = True) -> None:
                data = b"" if obj is None else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if product:
                    self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _handle(self) -> None:
                body = self._body()
                path = self.path.split("?")[0]
                with fake.lock:
                    fake.requests.append((self.command, self.path, body))
                    if fake.down:
                        self._send(503, {"error": "unavailable"}, product=False)
                        return
                    refused = media_type_error(int(fake.version.split(".")[0]),
                                               self.headers.get("Accept", ""),
                                               self.headers.get("Content-Type", ""), bool(body))
                    if refused is not None:
                        self._send(400, _media_type_exception(refused))
                        return
                    status, obj = fake.route(self.command, path, self.path, body)
                self._send(status, obj)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ routing
    def route(self, method: str, path: str, full: str, body: str) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return 200, {"name": "fake", "cluster_name": "fake", "version": {
                "number": self.version, "build_flavor": "default"},
                "tagline": "You Know, for Search"}
        if parts[0] == "_index_template" and method == "PUT":
            self.templates[parts[1]] = json.loads(body)
            return 200, {"acknowledged": True}
        if parts[-1] == "_bulk":
            return self.bulk(body)
        idx = parts[0]
        if len(parts) == 1:
            if method == "HEAD":
                return (200 if idx in self.indices else 404), None
            if method == "DELETE":
                if self.indices.pop(idx, None) is None:
                    return 404, {"error": {"type": "index_not_found_exception"}, "status": 404}
                return 200, {"acknowledged": True}
            if method == "PUT":
                if idx in self.indices:
                    return 400, {"error": {"type": "resource_already_exists_exception"},
                                 "status": 400}
                self.indices[idx] = {}
                return 200, {"acknowledged": True, "index": idx}
        if parts[-1] == "_search":
            return self.search(idx, json.loads(body or "{}"), full)
        if parts[-1] == "_refresh":
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        return 400, {"error": f"fake ES does not know {method} {path}"}

    def bulk(self, body: str) -> tuple[int, Any]:
        lines = [json.loads(x) for x in body.splitlines() if x.strip()]
        items = []
        errors = False
        for i in range(0, len(lines), 2):
            action = lines[i]
            op, meta = next(iter(action.items()))
            src = lines[i + 1]
            idx = self.indices.setdefault(meta["_index"], {})
            _id = meta["_id"]
            version = int(meta["version"])
            assert meta.get("version_type") == "external", meta
            if self.fail_items > 0:
                self.fail_items -= 1
                errors = True
                items.append({op: {"_index": meta["_index"], "_id": _id, "status": 429,
                                   "error": {"type": "es_rejected_execution_exception"}}})
                continue
            cur = idx.get(_id)
            if cur is not None and cur[0] >= version:
                errors = True
                items.append({op: {"_index": meta["_index"], "_id": _id, "status": 409,
                                   "error": {"type": "version_conflict_engine_exception"}}})
                continue
            idx[_id] = (version, src)
            items.append({op: {"_index": meta["_index"], "_id": _id, "_version": version,
                               "result": "created" if cur is None else "updated",
                               "status": 201 if cur is None else 200}})
        return 200, {"took": 1, "errors": errors, "items": items}

    def search(self, idx: str, body: dict[str, Any], full: str) -> tuple[int, Any]:
        docs = [(k, v[1]) for k, v in self.indices.get(idx, {}).items()]
        hits = [(k, d) for k, d in docs if self.match(body.get("query", {"match_all": {}}), d)]
        for spec in reversed(body.get("sort", [])):
            f, o = next(iter(spec.items()))
            hits.sort(key=lambda kd: kd[1].get(f, 0), reverse=o["order"] == "desc")
        frm, size = int(body.get("from", 0)), int(body.get("size", 10))
        page = hits[frm:frm + size]
        return 200, {"took": 1, "timed_out": False,
                     "hits": {"total": {"value": len(hits), "relation": "eq"},
                              "hits": [{"_index": idx, "_id": k, "_score": None}
                                       for k, _ in page]}}

    # ------------------------------------------------------------------ query DSL
    def match(self, qd: dict[str, Any], d: dict[str, Any]) -> bool:
        kind, arg = next(iter(qd.items()))
        if kind == "match_all":
            return True
        if kind == "match_none":
            return False
        if kind == "bool":
            ok = all(self.match(x, d) for x in arg.get("filter", []) + arg.get("must", []))
            ok = ok and not any(self.match(x, d) for x in arg.get("must_not", []))
            if arg.get("should"):
                ok = ok and any(self.match(x, d) for x in arg["should"])
            return ok
        if kind == "nested":
            return any(self.match(arg["query"], {"tags." + k: v for k, v in t.items()})
                       for t in d.get(arg["path"], []))
        if kind == "multi_match":
            return any(self._phrase(arg["query"], self._get(d, f), arg["type"] == "phrase_prefix")
                       for f in arg["fields"])
        field, val = next(iter(arg.items()))
        vals = self._get(d, field)
        if kind == "term":
            return any(v == val and type(v) is type(val) or
                       (isinstance(v, (int, float)) and not isinstance(v, bool) and
                        not isinstance(val, bool) and isinstance(val, (int, float)) and v == val)
                       for v in vals)
        if kind == "terms":
            return any(v in set(val) for v in vals)
        if kind == "range":
            ops = {"lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
                   "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b}
            return any(all(type(v) is not bool and isinstance(v, type(b)) or
                           (isinstance(v, (int, float)) and isinstance(b, (int, float)))
                           for b in val.values()) and
                       all(ops[o](v, b) for o, b in val.items()) for v in vals
                       if not isinstance(v, bool))
        if kind == "prefix":
            return any(isinstance(v, str) and v.startswith(val) for v in vals)
        if kind == "wildcard":
            return any(isinstance(v, str) and fnmatch.fnmatchcase(v, val["value"]) for v in vals)
        raise AssertionError(f"fake ES: unsupported query {kind}")

    @staticmethod
    def _get(d: dict[str, Any], field: str) -> list[Any]:
        if field.endswith(".text"):
            field = field[:-5]
        v = d.get(field)
        if v is None:
            return []
        return v if isinstance(v, list) else [v]

    @staticmethod
    def _phrase(phrase: str, texts: list[Any], prefix: bool) -> bool:
        pw = _words(phrase)
        for t in texts:
            tw = _words(str(t))
            for i in range(len(tw) - len(pw) + 1):
                if all(tw[i + j] == pw[j] for j in range(len(pw) - 1)):
                    last = tw[i + len(pw) - 1]
                    if last.startswith(pw[-1]) if prefix else last == pw[-1]:
                        return True
        return False
