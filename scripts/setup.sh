#!/usr/bin/env bash
# Install what metafs needs on a fresh Debian/Ubuntu machine: FUSE 3 and friends (as root,
# or through sudo), then metafs with its optional parts. Prints, as its last line, the
# Python interpreter that has metafs installed (a .venv when the system Python is
# externally managed).
#   bash scripts/setup.sh          # runtime: metafs with all optional parts
#   bash scripts/setup.sh test     # also what the tests need
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-all}"
PKGS="fuse3 attr git rsync sqlite3 util-linux procps"
# the tests also build and run pjdfstest (the POSIX suite) on a mount
[ "$EXTRA" = test ] && PKGS="$PKGS autoconf automake libtool pkg-config libacl1-dev gcc make perl"
need=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
if [ -n "$need" ]; then
  SUDO=""
  [ "$(id -u)" != 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq $need >&2
fi
PY="${PYTHON:-python3}"
if "$PY" -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix else 1)'; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv >&2
  PY="$PWD/.venv/bin/python"
fi
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[${EXTRA}]" >&2
command -v "$PY" || echo "$PY"
