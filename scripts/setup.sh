#!/usr/bin/env bash
# Install what metafs needs on a fresh Debian/Ubuntu machine: FUSE 3 and friends (when
# run as root, or with sudo available), then metafs itself with its optional parts.
#   bash scripts/setup.sh          # runtime: metafs with all optional parts
#   bash scripts/setup.sh test     # also what the tests and benchmarks need
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-all}"
PKGS="fuse3 attr git rsync sqlite3 util-linux procps"
need=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
if [ -n "$need" ]; then
  SUDO=""
  [ "$(id -u)" != 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq $need >/dev/null
fi
PY="${PYTHON:-python3}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[${EXTRA}]"
