# Shared by the VNN-COMP scripts of this folder (sourced, not run).
# Sets GENBAB_ROOT (the repository) and GENBAB_PY (the Python that runs genbab)
# and defines the helpers below.

GENBAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GENBAB_PY=${GENBAB_PYTHON:-python3}
GENBAB_CONFIG_DIR=${GENBAB_CONFIG_DIR:-$GENBAB_ROOT/configs/vnncomp}
export PYTHONPATH="$GENBAB_ROOT${PYTHONPATH:+:$PYTHONPATH}"

die() {  # die CODE MESSAGE...
    local code=$1
    shift
    echo "$(basename "$0"): $*" >&2
    exit "$code"
}

check_version() {  # check_version "$1": the VNN-COMP interface version
    [ "$1" = "v1" ] || die 1 "expected version string 'v1' as the first argument, got '$1'"
}

find_config() {  # find_config CATEGORY: the YAML config for a category (empty if none)
    # Tried in order: CATEGORY.yaml, its lower-case form, the name without a
    # trailing _YYYY, any <that name>_*.yaml (e.g. acasxu -> acasxu_2023.yaml,
    # nn4sys -> nn4sys_2023.yaml), then default.yaml.  GENBAB_VNNCOMP_CONFIG
    # overrides the lookup.
    if [ -n "${GENBAB_VNNCOMP_CONFIG:-}" ]; then
        echo "$GENBAB_VNNCOMP_CONFIG"
        return
    fi
    local lower base candidate
    lower=$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')
    base=$(printf '%s' "$lower" | sed -E 's/_(19|20)[0-9]{2}$//')
    for candidate in "$GENBAB_CONFIG_DIR/$1.yaml" "$GENBAB_CONFIG_DIR/$lower.yaml" \
        "$GENBAB_CONFIG_DIR/$base.yaml" "$GENBAB_CONFIG_DIR/$base"_*.yaml \
        "$GENBAB_CONFIG_DIR/default.yaml"; do
        if [ -n "$1" ] && [ -f "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    [ -f "$GENBAB_CONFIG_DIR/default.yaml" ] && echo "$GENBAB_CONFIG_DIR/default.yaml"
    return 0
}

resolve_input() {  # resolve_input PATH: PATH, or PATH.gz when only that exists (else empty)
    if [ -f "$1" ]; then
        echo "$1"
    elif [ -f "$1.gz" ]; then
        echo "$1.gz"
    fi
}
