#!/usr/bin/env bash
# The unfinished part of a sweep on a lent GPU machine, in one call (issue 21): an H200 with 16 cores runs the
# 112 px Stanford Cars grid in minutes, not the days it takes on 2 CPU cores. Run from the repository root, with
# the config's data where it says (../shared/data/...: bench/gpu_stage.sh brings it to a machine that lacks it);
# the run folders go to RUNS_DIR and, when ARCHIVE is given, also into that one .tar.gz without weights.
#
#   bash bench/gpu_sweep.sh configs/cars50.yaml /tmp/runs "$OUT/runs.tar.gz"   # then, here: untar into RUNS_DIR,
#                                                                              # gtaseg report RUNS_DIR --out ...
#
# JOBS sweep processes share the GPU and the grid (each job is taken by one of them through its lock file), each
# with 16/JOBS loader workers' worth of cores. TIME_LIMIT (seconds, default none) stops the sweeps as SIGTERM does,
# after the current step, so that the archive is written inside the caller's own limit; a stopped run is
# redone by the next call. Runs on CPU and GPU differ in their numerics, so every seed of one setting must run
# on the same kind of machine: run whole settings here (all their seeds), and say in RESULTS.md which ran where
# (keep the GPU's RUNS_DIR apart from the CPU's runs dir until then).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: bash bench/gpu_sweep.sh CONFIG RUNS_DIR [ARCHIVE]}
RUNS_DIR=${2:?usage: bash bench/gpu_sweep.sh CONFIG RUNS_DIR [ARCHIVE]}
ARCHIVE=${3:-}
JOBS=${JOBS:-4}
PY=${PYTHON:-python}
read -ra GTASEG <<< "${GTASEG:-gtaseg}"   # a command of several words: "python3 -m gtaseg.cli" (gpu_stage.sh)
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
mkdir -p "$RUNS_DIR"
"${GTASEG[@]}" sweep "$CONFIG" --runs-dir "$RUNS_DIR" --print >/dev/null   # a config that does not parse fails here, once
limit=()
if [ -n "${TIME_LIMIT:-}" ]; then limit=(timeout --signal=TERM --kill-after=120 "$TIME_LIMIT"); fi
pids=()
for i in $(seq "$JOBS"); do
    OMP_NUM_THREADS=$((16 / JOBS)) "${limit[@]}" "${GTASEG[@]}" sweep "$CONFIG" --runs-dir "$RUNS_DIR" --keep-going \
        --resume > "$RUNS_DIR/sweep-$i.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || { rc=$?; [ "$rc" -eq 124 ] || status=1; }   # 124: stopped at TIME_LIMIT, not a failure
done
"${GTASEG[@]}" sweep "$CONFIG" --runs-dir "$RUNS_DIR" --print 2>&1 >/dev/null | tail -1   # the counts: finished, left
if [ -n "$ARCHIVE" ]; then bash bench/gpu_stage.sh archive "$RUNS_DIR" "$ARCHIVE"; fi
exit $status
