#!/usr/bin/env bash
# Issue 20's device checks in one run (at most about 9.5 minutes, each part under its own
# timeout): meta-training throughput
# on CUDA, the GPU-marked tests, and ONNX Runtime's providers for serving. Everything goes to
# $OUT (default artifacts/gpu_check). Run from the repository root:
#     OUT=... bash benchmarks/gpu_check.sh
# Python: ./.venv when .ci/setup can install (a machine with a package index), else the
# machine's own python3 with its CUDA torch (the device machines here are offline; their image
# holds torch, numpy, scipy, pandas, pyyaml, tqdm, pytest, onnx and a CPU-only onnxruntime).
# Wheels for anything else can travel in .whl/ (see /work/.library/device/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-artifacts/gpu_check}
mkdir -p "$OUT"
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=true GX_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/gpu_check.log"; }

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
PY=python3  # SETUP=1: install ./.venv by .ci/setup first (needs the package index)
if [ "${SETUP:-0}" = 1 ] && bash .ci/setup >>"$OUT/gpu_check.log" 2>&1; then PY=.venv/bin/python; fi
log "python: $PY"
$PY - <<'PY' 2>&1 | tee -a "$OUT/gpu_check.log"
import torch, platform
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "python", platform.python_version())
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, ort.get_available_providers())
except Exception as e:
    print("onnxruntime missing:", e)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/gpu_check.log" 2>&1

log "throughput: loop, plain, eager, cuda_graph at 32 256 1024 4096 (fp32, second order)"
timeout 210 $PY benchmarks/train_throughput.py --device cuda --batches 32 256 1024 4096 \
  --steps 20 --loop-steps 2 --modes loop plain eager cuda_graph \
  --out "$OUT/train_throughput_cuda.json" >>"$OUT/gpu_check.log" 2>&1
log "throughput exit $?"
log "throughput: bf16 cuda_graph and eager at 256 and 4096"
timeout 75 $PY benchmarks/train_throughput.py --device cuda --amp --batches 256 4096 \
  --steps 20 --modes eager cuda_graph --out "$OUT/train_throughput_cuda_bf16.json" \
  >>"$OUT/gpu_check.log" 2>&1
log "bf16 exit $?"
log "throughput: torch.compile (reduce-overhead) at 256"
timeout 120 $PY benchmarks/train_throughput.py --device cuda --batches 256 --steps 20 \
  --modes compile --out "$OUT/train_throughput_cuda_compile.json" >>"$OUT/gpu_check.log" 2>&1
log "compile exit $?"

log "tests: -m gpu"
if [ "$PY" = .venv/bin/python ]; then
  timeout 120 bash .ci/test -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.txt"
else  # no package index: the GPU tests whose modules need no pipeline packages
  timeout 120 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_fast_step.py \
    tests/test_train.py tests/test_ddp.py 2>&1 | tee "$OUT/pytest_gpu.txt"
fi
log "tests exit ${PIPESTATUS[0]}"

log "serving: ONNX Runtime providers (CUDA vs CPU latency needs onnxruntime-gpu)"
if $PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
   && [ -d "$( $PY -c 'from metarec.config import load_config; print(load_config("params.yaml").features.out_dir)' 2>/dev/null)" ]; then
  timeout 60 $PY benchmarks/serve_latency.py --iterations 500 --duration 5 \
    --out "$OUT/serve_latency_cuda.json" >>"$OUT/gpu_check.log" 2>&1
  log "serve exit $?"
else
  log "serve skipped: no CUDAExecutionProvider in this onnxruntime, or no prepared features"
fi
log "done"
