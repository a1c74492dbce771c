#!/usr/bin/env bash
# The GPU rows of benchmarks/cifar10_jpeg_resnet56.py (names gpu-*), run on a lent GPU
# machine in one call of limited length: everything it needs travels in .gpu/ (ignored by
# git, see below), and everything it produces lands in $OUT as at most 8 files.
#
# .gpu/ holds (made on the development machine):
#   cifar10-jpeg.tar.gz   tar czf .gpu/cifar10-jpeg.tar.gz -C ../shared/datasets cifar10-jpeg
#   runs/r56-B/           B's run directory (model.safetensors, arch.json, summary.json, ...)
#   whl/                  torch-pruning's wheel (pip download --no-deps torch-pruning==1.6.1)
#
# Steps: unpack the images to ../shared/datasets (where B's summary says they are); decode
# them once into the image cache; B's test and val top-1 on the GPU; the Trainer's GPU
# throughput (benchmarks/train_throughput.py, fp32 and bf16 + channels_last); then the rows
# at once (one process each, 2 torch threads), each stopped with SIGINT at $DEADLINE seconds
# after the start if still running (a stopped row resumes with --run ROW: rows are
# resumable); last, one archive per row directory and one of the logs into $OUT.
#
#   OUT=/tmp/out DEADLINE=480 bash benchmarks/gpu_rows.sh [ROW ...]
#
# THROUGHPUT=0 skips the throughput step (about 30 s of device time; measured in session 26,
# benchmarks/results/train_throughput_h200.md); SEEDS lists the splits to decode ahead
# (default "0 1": the rows' seeds). OVERHEAD=1 (default) first times the VACL regularizer's
# fused gradient against its loss-term form (benchmarks/vacl_regularizer_overhead.py
# --loss-term, about 30 s alone on the GPU; not measured on a GPU yet, session 28).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the results}
DEADLINE=${DEADLINE:-480}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this script (the rows themselves still ask for cuda)
PY=${PY:-python3}
THROUGHPUT=${THROUGHPUT:-1}
OVERHEAD=${OVERHEAD:-1}
export SEEDS=${SEEDS:-0 1}
ROWS=("$@")
if [ ${#ROWS[@]} -eq 0 ]; then
  # the GPU rows not yet measured (session 27). torch-pruning's row waits for the GPU 358
  # times a step (benchmarks/results/vacl_regularizer_overhead.md): give it the GPU alone
  ROWS=(gpu-r56-tp-groupnorm-oneshot-r2-full)
fi
start=$(date +%s)
logs=/tmp/gpu_logs
mkdir -p "$logs" "$OUT"
stamp() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$logs/driver.log"; }

stamp "commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .gpu/whl/*.whl >"$logs/pip.log" 2>&1
export PYTHONPATH="$PWD/src:/tmp/site" RESPRUNE_CACHE_DIR=/tmp/rcache PYTHONUNBUFFERED=1
mkdir -p ../shared/datasets
tar xzf .gpu/cifar10-jpeg.tar.gz -C ../shared/datasets
nvidia-smi >"$logs/nvidia-smi.txt" 2>&1
{ lscpu; free -g; } >"$logs/machine.txt" 2>&1
$PY - <<'EOF' 2>&1 | tee -a "$logs/driver.log"
import os, time, torch, torch_pruning, resprune
from resprune.data import load_dataset, make_loader
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
      "torch_pruning", torch_pruning.__version__)
t = time.time()
m = resprune.load(".gpu/runs/r56-B")
for seed in map(int, os.environ["SEEDS"].split()):  # the rows' splits: decoded once into the cache every row reads
    b = load_dataset("imagefolder", "../shared/datasets/cifar10-jpeg", val_fraction=0.1,
                     seed=seed, preprocess=m.preprocess, progress=False)
    for split in ("train", "val", "test"):
        make_loader(b, split, 256, train=split == "train", device="cpu")
print(f"images decoded in {time.time() - t:.1f} s")
EOF
stamp "data ready"
for split in test val; do
  $PY -m resprune.cli.main eval .gpu/runs/r56-B --split $split --device "$DEVICE" --json \
    >"$logs/eval_B_$split.json" 2>>"$logs/driver.log"
done
stamp "B evaluated: $(cat "$logs"/eval_B_test.json | head -c 300)"
if [ "$THROUGHPUT" = 1 ]; then
  $PY benchmarks/train_throughput.py --device "$DEVICE" --steps "${STEPS:-40}" --rounds 3 \
    >"$logs/throughput_fp32.md" 2>&1
  $PY benchmarks/train_throughput.py --device "$DEVICE" --steps "${STEPS:-40}" --rounds 3 --precision bf16 \
    --channels-last >"$logs/throughput_bf16_cl.md" 2>&1
  stamp "throughput measured: $(tail -1 "$logs/throughput_fp32.md")"
fi
if [ "$OVERHEAD" = 1 ]; then
  $PY benchmarks/vacl_regularizer_overhead.py --loss-term --device "$DEVICE" --rounds 20 \
    --steps 5 >"$logs/regularizer_overhead.md" 2>&1
  stamp "regularizer overhead: $(grep 'VACL overhead' "$logs/regularizer_overhead.md")"
fi

declare -A PID
for row in "${ROWS[@]}"; do
  setsid $PY benchmarks/cifar10_jpeg_resnet56.py --runs .gpu/runs --run "$row" --threads 2 \
    >"$logs/$row.log" 2>&1 &
  PID[$row]=$!
  stamp "started $row (pid ${PID[$row]})"
done
nvidia_sampled=0
while :; do
  running=0
  for row in "${ROWS[@]}"; do kill -0 "${PID[$row]}" 2>/dev/null && running=$((running + 1)); done
  now=$(( $(date +%s) - start ))
  if [ $nvidia_sampled -eq 0 ] && [ $now -gt 120 ]; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >>"$logs/nvidia-smi.txt"
    nvidia_sampled=1
  fi
  [ $running -eq 0 ] && break
  if [ $now -ge "$DEADLINE" ]; then
    stamp "deadline: stopping $running row(s)"
    for row in "${ROWS[@]}"; do kill -INT -- -"${PID[$row]}" 2>/dev/null; done
    sleep 8
    for row in "${ROWS[@]}"; do kill -KILL -- -"${PID[$row]}" 2>/dev/null; done
    break
  fi
  sleep 5
done
for row in "${ROWS[@]}"; do
  wait "${PID[$row]}" 2>/dev/null; rc=$?
  done_=$([ -f ".gpu/runs/$row/summary.json" ] && echo finished || echo unfinished)
  stamp "$row: rc $rc, $done_"
  [ -d ".gpu/runs/$row" ] && tar czf "$OUT/$row.tar.gz" -C .gpu/runs "$row"
done
stamp "done"
tar czf "$OUT/logs.tar.gz" -C /tmp gpu_logs
