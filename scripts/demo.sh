#!/usr/bin/env bash
# Set up metafs and show it working on the embedded default: a SQLite file and a local
# block directory in a throwaway data directory, then a FUSE mount when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/setup.sh all | tail -n 1)"
exec "$PY" -m metafs.cli demo "$@"
