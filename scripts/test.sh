#!/usr/bin/env bash
# Set up and run the whole test suite (real SQLite files, a real PostgreSQL started by the
# tests, a real S3 endpoint, real FUSE mounts when run as root). Extra arguments go to pytest.
# The suite waits on processes (namenodes, mounts, programs) far more than it computes, so
# it runs on METAFS_TEST_JOBS workers (default 2), each taking whole test files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/setup.sh test | tail -n 1)"
exec "$PY" -m pytest -q -n "${METAFS_TEST_JOBS:-2}" --dist loadfile -p no:benchmark "$@"
