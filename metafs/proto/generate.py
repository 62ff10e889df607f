"""Regenerate metafs_pb2*.py from proto/metafs.proto with grpcio-tools.

The committed files are made by the oldest generator the package's dependency floors allow,
so they import on every grpcio and protobuf release pyproject.toml accepts: gencode checks
that the runtime is not older than itself (protobuf also accepts gencode one major release
older than the runtime). Run it with exactly that generator, in an environment of its own
(grpcio-tools pins its protobuf), as a script, since the package need not be importable there::

    python -m venv /tmp/protogen
    /tmp/protogen/bin/pip install grpcio-tools==1.74.0
    /tmp/protogen/bin/python metafs/proto/generate.py [OUTDIR]

A test checks that regenerating the committed files this way changes nothing.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

GENERATOR = "grpcio-tools"
GENERATOR_VERSION = "1.74.0"
"""Writes protobuf 6.31.1 and grpcio 1.74.0 gencode: pyproject.toml's floors."""

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
HERE = Path(__file__).resolve().parent


def generate(out_dir: Path = HERE) -> list[Path]:
    found = version(GENERATOR)
    if found != GENERATOR_VERSION:
        raise SystemExit(f"generate.py needs {GENERATOR}=={GENERATOR_VERSION} (the gencode must "
                         f"match the dependency floors), found {found}: see its docstring")
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
