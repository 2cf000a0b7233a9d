#!/usr/bin/env bash
# The unfinished part of a sweep on a lent GPU machine, in one call (issue 21): an H200 with 16 cores runs the
# 112 px Stanford Cars grid in minutes, not the days it takes on 2 CPU cores. Run from the repository root, with
# ../shared/data/stanford-cars beside the clone; the run folders go to RUNS_DIR, which comes back to be committed.
#
#   bash bench/gpu_sweep.sh configs/cars.yaml "$OUT/runs"      # then: gtaseg report RUNS_DIR --out results/cars
#
# JOBS sweep processes share the GPU and the grid (each job is taken by one of them through its lock file), each
# with 16/JOBS loader workers' worth of cores. Runs on CPU and GPU differ in their numerics, so every seed of one
# setting must run on the same kind of machine: run whole settings here (all their seeds), and say in RESULTS.md
# which ran where (keep the GPU's RUNS_DIR apart from the CPU's runs dir until then).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: bash bench/gpu_sweep.sh CONFIG RUNS_DIR}
RUNS_DIR=${2:?usage: bash bench/gpu_sweep.sh CONFIG RUNS_DIR}
JOBS=${JOBS:-4}
PY=${PYTHON:-python}
GTASEG=${GTASEG:-gtaseg}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
mkdir -p "$RUNS_DIR"
"$GTASEG" sweep "$CONFIG" --runs-dir "$RUNS_DIR" --print >/dev/null   # a config that does not parse fails here, once
pids=()
for i in $(seq "$JOBS"); do
    OMP_NUM_THREADS=$((16 / JOBS)) "$GTASEG" sweep "$CONFIG" --runs-dir "$RUNS_DIR" --keep-going --resume \
        > "$RUNS_DIR/sweep-$i.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
"$GTASEG" sweep "$CONFIG" --runs-dir "$RUNS_DIR" --print 2>&1 >/dev/null | tail -1   # the counts: finished, left
exit $status
