"""Choosing the embedded search back end: SQLite (FTS5 + typed tags) vs tantivy.

    python benchmarks/search_backends.py --docs 1000000 [--json out.json]

Both engines index the same synthetic documents (the distribution of
``benchmarks/search.py``: 1,000 directories, names ``fNNNNNNN.ext``, tags ``bicycles``,
``label``, ``score``, ``reviewed`` and a caption on one file in five) and answer the same
ten query shapes (limit 100). No namenode is involved:

- SQLite: the real embedded back end (:class:`EmbeddedIndex`), fed change records built
  in memory (``OP_MKDIR``, ``OP_CREATE``, ``OP_SETXATTR``) through its consumer ``apply``
  in batches, so the figure includes typing the tags and the bulk-replay index build;
  queries are parsed, planned and run, returning the first 100 inode ids.
- tantivy (Python bindings): one document per file with ``ino``, ``name``, ``ext``,
  ``size``, the ancestor directory ids (``dirs``, multi-valued: what ``under:`` needs
  without a directory table), a JSON ``tags`` field (raw tokenizer, fast) and ``text``
  (captions); one writer, committed every batch; queries through its query parser
  (``regex_query`` for the name prefix), with the stored ``ino`` of each hit fetched.

Only one engine runs at a time (the machine has few cores).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metafs.cdc.search import query as q  # noqa: E402
from metafs.cdc.search.embedded import EmbeddedIndex  # noqa: E402
from metafs.proto import metafs_pb2 as pb  # noqa: E402

LABELS = ["cat", "dog", "person", "car", "bicycle", "tree", "boat", "bird"]
CAPTIONS = ["a red car on a street", "a dog in the park", "red bicycle by a wall",
            "people crossing", "a blue car", "boats in a harbour"]
DIRS = 1000
ROOT, DATASETS = 1, 2
FIRST_DIR = 10
FIRST_FILE = FIRST_DIR + DIRS + 10

SHAPES: list[tuple[str, str, str]] = [
    # (shape, metafs query, tantivy query)
    ("tag range", "bicycles>3", "tags.bicycles:>3"),
    ("extension", "ext:jpg", "ext:jpg"),
    ("tag string", "label=cat", "tags.label:cat"),
    ("phrase", '"red car"', 'text:"red car"'),
    ("issue example", 'bicycles>3 ext:jpg under:/datasets/d007 "red car"',
     f'tags.bicycles:>3 AND ext:jpg AND dirs:{FIRST_DIR + 7} AND text:"red car"'),
    ("under dir", "under:/datasets/d042", f"dirs:{FIRST_DIR + 42}"),
    ("narrow float range", "score>=0.5 score<0.501", "tags.score:[0.5 TO 0.501}"),
    ("boolean logic", "(label=cat OR label=dog) NOT reviewed=true",
     "(tags.label:cat OR tags.label:dog) -tags.reviewed:true"),
    ("name prefix", "name:f00123*", "regex:f00123.*"),
    ("sorted by size", "size>100 ext:png", "size:>100 AND ext:png"),
]


def synthetic(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` file documents: ino, dir index, name, ext, size, tags (JSON values)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        tags: dict[str, Any] = {
            "bicycles": rnd.randrange(0, 8),
            "label": rnd.choice(LABELS),
            "score": round(rnd.random(), 4),
            "reviewed": rnd.random() < 0.5,
        }
        if rnd.random() < 0.2:
            tags["caption"] = rnd.choice(CAPTIONS)
        ext = rnd.choice(["jpg", "jpg", "png", "txt"])
        out.append({"ino": FIRST_FILE + i, "dir": i % DIRS, "name": f"f{i:07d}.{ext}",
                    "ext": ext, "size": rnd.randrange(0, 200), "tags": tags})
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def time_queries(run: Callable[[str, str], int], shapes: list[tuple[str, str]],
                 reps: int) -> list[dict[str, Any]]:
    rows = []
    for shape, query in shapes:
        run(shape, query)  # warm
        times = []
        hits = 0
        for _ in range(reps):
            t0 = time.perf_counter()
            hits = run(shape, query)
            times.append((time.perf_counter() - t0) * 1000)
        rows.append({"shape": shape, "query": query, "p50_ms": statistics.median(times),
                     "p99_ms": pct(times, 99), "returned": hits})
    return rows


# ---------------------------------------------------------------------- SQLite
def sqlite_records(docs: list[dict[str, Any]]) -> list[pb.ChangeRecord]:
    recs: list[pb.ChangeRecord] = []
    seq = 0

    def add(**kw: Any) -> None:
        nonlocal seq
        seq += 1
        recs.append(pb.ChangeRecord(seq=seq, **kw))

    dattr = pb.Attr(mode=0o040755, nlink=2)
    add(op=pb.OP_MKDIR, ino=DATASETS, parent=ROOT, name="datasets", attr=dattr)
    for d in range(DIRS):
        add(op=pb.OP_MKDIR, ino=FIRST_DIR + d, parent=DATASETS, name=f"d{d:03d}", attr=dattr)
    for doc in docs:
        add(op=pb.OP_CREATE, ino=doc["ino"], parent=FIRST_DIR + doc["dir"], name=doc["name"],
            attr=pb.Attr(mode=0o100644, size=doc["size"], nlink=1))
        for k, v in doc["tags"].items():
            add(op=pb.OP_SETXATTR, ino=doc["ino"], xattr_name=f"user.{k}",
                xattr_value=json.dumps(v).encode())
    return recs


def run_sqlite(docs: list[dict[str, Any]], where: Path, batch: int,
               reps: int) -> dict[str, Any]:
    recs = sqlite_records(docs)
    idx = EmbeddedIndex(where / "index.db")
    t0 = time.perf_counter()
    for i in range(0, len(recs), batch):
        chunk = recs[i:i + batch]
        idx.apply(chunk, chunk[-1].seq)
    idx.caught_up()  # builds the query indexes of the bulk replay
    t_index = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in where.iterdir())

    c = idx.reader()

    def run(shape: str, query: str) -> int:
        # Like tantivy's side: parse, plan, run, return the ids of the first 100 hits
        # (search() would also resolve their paths and tags: ~1-3 ms more for 100 hits).
        order = q.parse_sort("-size" if shape == "sorted by size" else None)
        inos, _ = idx._find(c, q.parse(query), order, 100, 0, False)
        return len(inos)

    rows = time_queries(run, [(s, m) for s, m, _ in SHAPES], reps)
    idx.close()
    return {"index_s": t_index, "docs_per_s": len(docs) / t_index, "bytes": size,
            "records": len(recs), "queries": rows}


# ---------------------------------------------------------------------- tantivy
def run_tantivy(docs: list[dict[str, Any]], where: Path, batch: int,
                reps: int) -> dict[str, Any]:
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("ino", stored=True, indexed=True, fast=True)
    sb.add_text_field("name", stored=True)
    sb.add_text_field("ext", tokenizer_name="raw")
    sb.add_unsigned_field("dirs", indexed=True)
    sb.add_unsigned_field("size", indexed=True, fast=True)
    sb.add_json_field("tags", stored=True, tokenizer_name="raw", fast=True)
    sb.add_text_field("text")
    schema = sb.build()
    ix = tantivy.Index(schema, path=str(where))
    w = ix.writer(heap_size=256_000_000, num_threads=1)
    t0 = time.perf_counter()
    for i, d in enumerate(docs, 1):
        doc = tantivy.Document()
        doc.add_unsigned("ino", d["ino"])
        doc.add_text("name", d["name"])
        doc.add_text("ext", d["ext"])
        doc.add_unsigned("dirs", DATASETS)
        doc.add_unsigned("dirs", FIRST_DIR + d["dir"])
        doc.add_unsigned("size", d["size"])
        doc.add_json("tags", d["tags"])
        if "caption" in d["tags"]:
            doc.add_text("text", d["tags"]["caption"])
        w.add_document(doc)
        if i % batch == 0:
            w.commit()
    w.commit()
    w.wait_merging_threads()
    t_index = time.perf_counter() - t0
    ix.reload()
    size = sum(f.stat().st_size for f in where.iterdir() if f.is_file())
    searcher = ix.searcher()
    parsed = {}
    for shape, _, tq in SHAPES:
        if tq.startswith("regex:"):
            parsed[shape] = tantivy.Query.regex_query(schema, "name", tq[len("regex:"):])
        else:
            parsed[shape] = ix.parse_query(tq, ["text"])

    def run(shape: str, _query: str) -> int:
        if shape == "sorted by size":
            res = searcher.search(parsed[shape], 100, order_by_field="size",
                                  order=tantivy.Order.Desc)
        else:
            res = searcher.search(parsed[shape], 100)
        return len([searcher.doc(addr)["ino"][0] for _, addr in res.hits])

    rows = time_queries(run, [(s, t) for s, _, t in SHAPES], reps)
    counts = {s: searcher.search(parsed[s], 1).count for s, _, _ in SHAPES}
    for r in rows:
        r["matches"] = counts[r["shape"]]
    return {"index_s": t_index, "docs_per_s": len(docs) / t_index, "bytes": size,
            "queries": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000, help="records (SQLite) / docs "
                    "(tantivy) per commit")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--only", choices=["sqlite", "tantivy"])
    ap.add_argument("--json")
    args = ap.parse_args()
    docs = synthetic(args.docs)
    res: dict[str, Any] = {"docs": args.docs}
    base = Path(tempfile.mkdtemp(prefix="mfbackends"))
    try:
        for name, fn in (("sqlite", run_sqlite), ("tantivy", run_tantivy)):
            if args.only and args.only != name:
                continue
            where = base / name
            where.mkdir()
            r = fn(docs, where, args.batch, args.reps)
            res[name] = r
            print(f"{name}: indexed {args.docs:,} docs in {r['index_s']:.1f}s "
                  f"({r['docs_per_s']:,.0f} docs/s), {r['bytes'] / 2**20:,.0f} MiB", flush=True)
            shutil.rmtree(where)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    names = [n for n in ("sqlite", "tantivy") if n in res]
    print(f"\n{'shape':<20}" + "".join(f" {n + ' p50':>13} {n + ' p99':>13}" for n in names))
    for i, (shape, _, _) in enumerate(SHAPES):
        print(f"{shape:<20}" + "".join(
            f" {res[n]['queries'][i]['p50_ms']:13.1f} {res[n]['queries'][i]['p99_ms']:13.1f}"
            for n in names))
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
