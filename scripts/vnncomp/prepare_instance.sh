#!/usr/bin/env bash
# VNN-COMP: prepare one instance.  Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Cheap checks only (no model is loaded; loading counts against run_instance's
# timeout): the version string, that both files exist (FILE or FILE.gz), and
# which configuration run_instance.sh will use for CATEGORY.  Exit 0 when the
# instance can run, 1 otherwise.  It kills nothing: run_instance.sh never
# leaves a verifier running behind it.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
[ $# -eq 4 ] || die 1 "usage: $0 v1 CATEGORY ONNX VNNLIB"
check_version "$1"
CATEGORY=$2
[ -n "$(resolve_input "$3")" ] || die 1 "no such model file: $3"
[ -n "$(resolve_input "$4")" ] || die 1 "no such property file: $4"
CONFIG=$(find_config "$CATEGORY")
echo "genbab: category '$CATEGORY' uses ${CONFIG:-the built-in defaults}"
exit 0
