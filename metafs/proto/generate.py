"""Regenerate metafs_pb2*.py from proto/metafs.proto with grpcio-tools.

``python -m metafs.proto.generate [OUTDIR]``; the committed files are the output for this
package's own directory, and a test checks that regenerating them changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
HERE = Path(__file__).resolve().parent


def generate(out_dir: Path = HERE) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / "metafs.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on proto/metafs.proto")
    grpc_file = out_dir / "metafs_pb2_grpc.py"
    text = grpc_file.read_text()
    # protoc writes a top-level import; the package needs a relative one.
    grpc_file.write_text(text.replace("import metafs_pb2 as", "from . import metafs_pb2 as"))
    return [out_dir / n for n in ("metafs_pb2.py", "metafs_pb2.pyi", "metafs_pb2_grpc.py")]


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
