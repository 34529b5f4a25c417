#!/usr/bin/env bash
# One command for a lent GPU: profile and time the paper configs, write everything under $OUT.
#
#   OUT=/tmp/prof bash tools/gpu_profile.sh            # on a CUDA machine, from the repo root
#   WHEELS=wheels/ OUT=... bash tools/gpu_profile.sh   # install torch from carried wheels first
#   DEVICE=cpu CONFIGS=tetrominoes PRECISIONS=fp32 VARIANTS=eager STEPS=1 WARMUP=1 OUT=... \
#       bash tools/gpu_profile.sh                      # a CPU dry run of the pipeline
#
# For each paper config at the paper's batch (CLEVR6 32 in bf16, 8 otherwise; Multi-dSprites
# and Tetrominoes 32), each precision (bf16 first: the target rows) and each variant (eager,
# then SOLVER.COMPILE_STEP with CUDA graphs), one `tools/benchmark.py --profile --json` run:
# images/s, the conv / other-kernel / idle shares of the step, kernels per step and the
# fraction of the precision's peak. Entries past MINUTES (default 9) are skipped, so the whole
# script fits a 15-minute loan with room for one rerun. The table: $OUT/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the output folder}
MINUTES=${MINUTES:-9}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the pipeline (no peak, operators not kernels)
CONFIGS=${CONFIGS:-clevr6_prop multi_dsprites tetrominoes}
PRECISIONS=${PRECISIONS:-bf16 tf32 fp32}
VARIANTS=${VARIANTS:-eager step_graphs}
mkdir -p "$OUT"
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q --no-index --find-links "${WHEELS:?no torch here: set WHEELS}" \
        torch torchvision
fi
python -m pip install -q -e . --no-deps 2>/dev/null || export PYTHONPATH=$PWD
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" \
    > "$OUT/device.txt" 2>&1
deadline=$(( $(date +%s) + 60 * MINUTES ))
batch() {  # config precision -> the paper's per-GPU batch where it fits
    case "$1" in
        clevr6_prop) [ "$2" = bf16 ] && echo 32 || echo 8 ;;
        *) echo 32 ;;
    esac
}
for variant in $VARIANTS; do
    for precision in $PRECISIONS; do
        for config in $CONFIGS; do
            name="${config}_${precision}_${variant}"
            if [ "$(date +%s)" -gt "$deadline" ]; then
                echo "$name: skipped (MINUTES=$MINUTES used up)" >> "$OUT/skipped.txt"
                continue
            fi
            extra=()
            warmup=$WARMUP
            if [ "$variant" = step_graphs ]; then
                extra=(SOLVER.COMPILE_STEP True SOLVER.COMPILE_MODE reduce-overhead)
                warmup=$(( WARMUP + 5 ))  # the first steps compile and record the graphs
            fi
            echo "== $name" >&2
            python tools/benchmark.py --config-file "configs/$config.yaml" --device "$DEVICE" \
                --precision "$precision" --batch-size "$(batch "$config" "$precision")" \
                --steps "$STEPS" --warmup "$warmup" --profile --profile-steps 5 \
                --json "$OUT/$name.json" "${extra[@]}" > "$OUT/$name.txt" 2> "$OUT/$name.log" \
                || echo "$name: failed (exit $?), see $name.log" >> "$OUT/failed.txt"
        done
    done
done
python -m lib.analysis.kernel_profile "$OUT"/*.json | tee "$OUT/summary.txt"
