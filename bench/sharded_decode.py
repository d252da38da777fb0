"""Calibration-grid decoding on one device vs a data-parallel mesh, in one run.

Decodes N inputs under K thresholds with `decode_threshold_grid` (what calibrate and
evaluate run) on 1 device and on a ('data', 'model') mesh of every device (D data shards),
timed in interleaved rounds, and checks that both give the same tokens and exit layers.

On a machine whose devices are real (a GPU node, a TPU slice), the wall-clock ratio is the
speedup. On a CPU with simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=8,
set here when the flag is absent) the devices share the machine's cores and memory bus, so
wall time cannot speed up, and what is compared is work: CPU seconds (time.process_time,
all threads). Two framings of "per-device work", printed side by side:

- strong scaling (same global batch): the mesh's CPU time for the N examples vs one
  device's for the same N examples. Each shard then runs its loops, and streams every
  decoder weight per step, for N / D rows where one device streams them once for N rows,
  so a decode bound by weight traffic costs up to D times the weight reads.
- weak scaling (same rows per device): the mesh's CPU time / D (one device's share)
  vs one device decoding one shard's share alone: the N examples in D contiguous blocks
  of N / D, one after another, each with batch_size / D rows per call, divided by D. The
  same rows per device per call, so the ratio is what sharding itself adds per device
  (the issue's bar: at most 1.15). Printed for the grid and for one decode call
  (`generate_with_thresholds` on every (example, threshold) row vs its D blocks alone).

A control separates what the mesh program adds from what running D simulated devices at
once costs on a shared CPU: the D blocks of the call dispatched at once, block i to device
i, each a plain 1-device decode (no shard_map, no mesh). mesh / that control near 1 means
the sharded program itself adds nothing; the rest of the weak-scaling ratio is the
devices competing for the same cores, caches and memory bus.

  .venv/bin/python bench/sharded_decode.py [--examples=64 --thresholds=10 --model=1]
"""

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

# pylint: disable=wrong-import-position
import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.timing import SHAPES, interleaved
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_with_thresholds
from calm_jax.decoding.sharded import decode_mesh
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import decoding_params
from calm_jax.model.t5 import init_params
from calm_jax.training.sharding import MeshConfig

_SHAPE = flags.DEFINE_enum("shape", "demo", sorted(SHAPES), "model shape (bench/timing.py)")
_EXAMPLES = flags.DEFINE_integer("examples", 64, "calibration inputs")
_THRESHOLDS = flags.DEFINE_integer("thresholds", 10, "grid size: 1.0, then quantiles of the "
                                   "model's early confidences")
_INPUT_LEN = flags.DEFINE_integer("input_len", 32, "input ids per example")
_DECODE_LEN = flags.DEFINE_integer("decode_len", 16, "output positions")
_BATCH = flags.DEFINE_integer("batch_size", 0, "rows per decode call; 0 = all examples")
_MODEL = flags.DEFINE_integer("model", 1, "mesh.model of the sharded run")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "interleaved timing rounds")
_HEAD_SCALE = flags.DEFINE_float("head_scale", 0.3, "LM head scale of the random model "
                                 "(a random T5's head is peaked: every token would exit at "
                                 "layer 1)")


def _model():
  config = T5Config(**SHAPES[_SHAPE.value])
  params = init_params(config, jax.random.PRNGKey(0))
  head = "lm_head" if "lm_head" in params else "shared"
  key = "kernel" if head == "lm_head" else "embedding"
  params[head][key] = params[head][key] * _HEAD_SCALE.value
  return config, params


def _thresholds(config, params, ids, mask) -> np.ndarray:
  """1.0, then quantiles (95% down to 5%) of the model's confidences at the early exit
  points of its never-exit decode: a grid where pairs really differ."""
  full = generate(config, params, ids, mask, exit=ExitConfig(measure="softmax_diff"),
                  max_decode_len=_DECODE_LEN.value, return_trace=True)
  early = np.asarray(full.trace)[..., :-1]  # [B, T, L - 1]
  levels = np.quantile(early[np.isfinite(early)], np.linspace(0.95, 0.05, _THRESHOLDS.value - 1))
  return np.concatenate([[1.0], levels]).astype(np.float32)


def _blocks(rows: int, count: int):
  """`count` contiguous slices of `rows` rows (each data shard's share of a batch)."""
  size = rows // count
  return [slice(i * size, (i + 1) * size) for i in range(count)]


def main(argv):
  del argv
  config, params = _model()
  rng = np.random.default_rng(0)
  ids = rng.integers(3, config.vocab_size, (_EXAMPLES.value, _INPUT_LEN.value)).astype(np.int32)
  mask = np.ones_like(ids)
  thresholds = _thresholds(config, params, ids, mask)
  mesh = decode_mesh(MeshConfig(data=-1, model=_MODEL.value))
  shards = mesh.data_size
  batch = _BATCH.value or _EXAMPLES.value
  if _EXAMPLES.value % shards or batch % shards:
    raise app.UsageError(f"--examples and --batch_size must divide by the {shards} shards")
  exit_config = ExitConfig(measure="softmax_diff")
  grid = lambda rows, size, where: decode_threshold_grid(
      config, params, ids[rows], mask[rows], thresholds=thresholds, exit=exit_config,
      max_decode_len=_DECODE_LEN.value, batch_size=size, mesh=where)
  # One decode call: every (example, threshold) pair as a row, example-major.
  pair_ids, pair_mask = np.repeat(ids, thresholds.size, 0), np.repeat(mask, thresholds.size, 0)
  pair_thresholds = np.tile(thresholds, _EXAMPLES.value)
  call = lambda rows, where: generate_with_thresholds(
      config, params, pair_ids[rows], pair_mask[rows], thresholds=pair_thresholds[rows],
      exit=exit_config, max_decode_len=_DECODE_LEN.value, mesh=where)
  everything = slice(None)
  # The control: block i decoded on device i, all dispatched before any is awaited.
  per_device = [jax.device_put(decoding_params(params), device) for device in jax.devices()]

  def blocks_at_once():
    outs = []
    for rows, device, device_params in zip(pair_blocks, jax.devices(), per_device):
      with jax.default_device(device):
        outs.append(generate_with_thresholds(
            config, device_params, pair_ids[rows], pair_mask[rows],
            thresholds=pair_thresholds[rows], exit=exit_config,
            max_decode_len=_DECODE_LEN.value))
    return outs
  blocks, pair_blocks = _blocks(_EXAMPLES.value, shards), _blocks(pair_ids.shape[0], shards)
  fns = {
      "grid, 1 device": lambda: grid(everything, batch, None),
      "grid, mesh": lambda: grid(everything, batch, mesh),
      "grid, D blocks on 1 device": lambda: [grid(b, batch // shards, None) for b in blocks],
      "call, mesh": lambda: call(everything, mesh),
      "call, D blocks on 1 device": lambda: [call(b, None) for b in pair_blocks],
      "call, D blocks at once, D devices": blocks_at_once,
  }
  one, sharded = fns["grid, 1 device"](), fns["grid, mesh"]()  # compiles, and compared
  assert np.array_equal(one.tokens, sharded.tokens), "tokens differ"
  assert np.array_equal(one.exit_layers, sharded.exit_layers), "exit layers differ"
  wall, _ = interleaved(fns, _ROUNDS.value, clock="wall")
  cpu, _ = interleaved(fns, _ROUNDS.value, clock="cpu")
  pairs = thresholds.size * _EXAMPLES.value
  print(f"{jax.device_count()} {jax.default_backend()} devices; {mesh.describe()}; "
        f"shape {_SHAPE.value}; {_EXAMPLES.value} examples x {thresholds.size} thresholds = "
        f"{pairs} pairs ({one.decoded_pairs} decoded, the rest copied), batch {batch}; mean "
        f"exit layer {one.exit_layers[one.exit_layers > 0].mean():.2f} of {one.num_layers}")
  for name in fns:
    print(f"  {name:33s} {pairs / wall[name]:8.1f} pairs/s wall   "
          f"{pairs / cpu[name]:8.1f} pairs per CPU-second")
  print(f"wall speedup of the mesh: {wall['grid, 1 device'] / wall['grid, mesh']:.2f}x")
  print(f"strong scaling, CPU work of the mesh / 1 device, same {_EXAMPLES.value} examples: "
        f"{cpu['grid, mesh'] / cpu['grid, 1 device']:.2f}")
  print(f"weak scaling, per-device work: mesh CPU / {shards} vs one {_EXAMPLES.value // shards}"
        f"-example block alone (batch {batch // shards}): grid "
        f"{cpu['grid, mesh'] / cpu['grid, D blocks on 1 device']:.2f}, one decode call "
        f"{cpu['call, mesh'] / cpu['call, D blocks on 1 device']:.2f} (bar 1.15)")
  print(f"control, one decode call: mesh / the D blocks at once on D devices without the mesh "
        f"{cpu['call, mesh'] / cpu['call, D blocks at once, D devices']:.2f}; those blocks at "
        f"once / in turn on 1 device "
        f"{cpu['call, D blocks at once, D devices'] / cpu['call, D blocks on 1 device']:.2f}")


if __name__ == "__main__":
  app.run(main)
