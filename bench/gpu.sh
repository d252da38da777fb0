#!/usr/bin/env bash
# The speed benchmarks on a GPU in one call, in under 8 minutes: what a session that is lent
# an accelerator runs first. Uses the machine's own python3 with JAX (CUDA) and transformers;
# ml_collections is the only runtime dependency such images tend to lack (carry it as a
# wheel, see WORKSPACE.md). Writes every log to $OUT (or ./gpu_bench) and prints them.
#
#   bash bench/gpu.sh            # on the GPU machine, from the repository root
#
# Steps (each under its own time limit, so one slow step cannot eat the others):
#  1. the device and JAX's view of it;
#  2. layer layouts at float32 and bfloat16 (calm and large shapes, batch 1 and 8): the
#     stacked layout (a dynamic layer index in one while loop) against per-layer buffers
#     (unrolled layer loops; the early-exit decoder's layers one conditional each) — on a
#     GPU each while-loop step or conditional may cost a host round trip, which is what
#     'auto' = stacked on GPUs assumes and this measures;
#  3. greedy vs the early-exit decoder at lambda = 1 and static exits (calm shape, batch 1
#     and 8, 256 and 1024 inputs), float32;
#  4. the data moves inside the compiled token loop (calm, batch 8, 1024 inputs).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-gpu_bench}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false

step() {  # step <seconds> <log name> <command...>
  local limit=$1 log=$out/$2; shift 2
  echo "== $* (limit ${limit}s)" | tee "$log"
  timeout "$limit" "$@" 2>&1 | grep -v "Unable to initialize backend" | tee -a "$log"
}

step 30 device.txt "$py" -c "import jax; print(jax.__version__, jax.devices())"
for dtype in float32 bfloat16; do
  step 100 "layout_$dtype.txt" "$py" bench/layer_layout.py --shapes=calm,large --batches=1,8 \
      --rounds=5 --dtype=$dtype
done
step 150 early_exit.txt "$py" bench/early_exit_speed.py --shape=calm --batches=1,8 \
    --input_lens=256,1024 --rounds=5 --compare_transformers=false
step 60 loop_copies.txt "$py" bench/loop_copies.py --shape=calm --batch=8 --input_len=1024 \
    --layer_layout=stacked
