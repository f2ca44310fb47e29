#!/usr/bin/env bash
# VNN-COMP: install genbab.  Usage: install_tool.sh v1
# Installs this checkout in editable mode with torch 2.13.0 (pinned as in the
# README).  Running it again is harmless: when this checkout already is the
# installed genbab and torch is 2.13, it installs nothing.
# GENBAB_PYTHON chooses the Python (default python3).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
[ $# -eq 1 ] || die 1 "usage: $0 v1"
check_version "$1"

installed() {  # is this checkout the genbab that $GENBAB_PY imports, outside the repo?
    (cd / && env -u PYTHONPATH "$GENBAB_PY" - "$GENBAB_ROOT" <<'PY') >/dev/null 2>&1
import os, sys
from importlib.metadata import version
import genbab
here = os.path.realpath(os.path.join(sys.argv[1], "genbab"))
assert os.path.realpath(os.path.dirname(genbab.__file__)) == here
assert version("torch").startswith("2.13.")
PY
}

if installed; then
    echo "genbab is already installed from $GENBAB_ROOT with torch 2.13; nothing to do"
    exit 0
fi
echo "installing genbab from $GENBAB_ROOT with $GENBAB_PY"
"$GENBAB_PY" -m pip install "torch==2.13.0" -e "$GENBAB_ROOT"
installed || die 1 "the installed genbab is not this checkout ($GENBAB_ROOT)"
(cd / && env -u PYTHONPATH "$GENBAB_PY" -m genbab.cli --version)
