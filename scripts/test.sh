#!/usr/bin/env bash
# Set up and run the whole test suite (real SQLite files, a real PostgreSQL started by the
# tests, a real S3 endpoint, real FUSE mounts when run as root). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/setup.sh test | tail -n 1)"
exec "$PY" -m pytest -q "$@"
