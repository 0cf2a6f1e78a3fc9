#!/usr/bin/env bash
# The GPU speed target, on a machine with JAX (no TensorFlow needed):
#   1. `suite bench` for EfficientNetB0 at 224 px, batch 128, default precision (bf16 on a GPU):
#      the suite's image cache and training loop against a bare model.fit, same card, same call;
#   2. a small `suite run`, twice: mixed precision by default, and the second run loading its
#      compiled programs from the persistent compilation cache instead of recompiling.
#
#   bash benchmarks/gpu_target.sh OUT_DIR
#
# Writes OUT_DIR/bench.json (the bench's JSON), OUT_DIR/runs.json (each run's precision,
# compile and timing figures) and logs. SIZE, BATCH, STEPS, ROUNDS and BACKBONE override the
# bench's settings (e.g. SIZE=32 STEPS=2 for a quick check on a CPU).
set -uo pipefail
out=${1:?usage: gpu_target.sh OUT_DIR}
mkdir -p "$out"
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export SUITE_CACHE_DIR=${SUITE_CACHE_DIR:-$(mktemp -d)}
runs=$(mktemp -d)

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") | tee "$out/gpu.txt"
"${PYTHON:-python3}" -m suite bench --backbone "${BACKBONE:-efficientnetb0}" --image-size "${SIZE:-224}" \
  --batch-size "${BATCH:-128}" --steps "${STEPS:-60}" --epochs 3 --rounds "${ROUNDS:-2}" \
  >"$out/bench.json" 2>"$out/bench.log"
echo "bench exit $?"
cat "$out/bench.json"

for i in 1 2; do
  "${PYTHON:-python3}" -m suite run --backbone mobilenetv2 --weights none --epochs 2 --image-size 64 --out "$runs" --quiet \
    >>"$out/run.log" 2>&1
  echo "run $i exit $?"
done
"${PYTHON:-python3}" - "$runs" "$out/runs.json" <<'EOF'
import json, sys
from pathlib import Path
rows = []
for manifest in sorted(Path(sys.argv[1]).glob("*/manifest.json")):
    m = json.loads(manifest.read_text())
    metrics = manifest.with_name("metrics.json")
    rows.append({k: m.get(k) for k in ("run_id", "status", "error", "backend", "device", "precision_policy",
                                      "strategy", "replicas", "compile", "timings", "train_images_per_s")}
                | {"accuracy": json.loads(metrics.read_text())["accuracy"] if metrics.is_file() else None})
Path(sys.argv[2]).write_text(json.dumps(rows, indent=2))
print(json.dumps(rows, indent=2))
EOF
