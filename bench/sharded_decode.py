"""Calibration-grid decoding on one device vs a data-parallel mesh, in one run.

Decodes N inputs under K thresholds with `decode_threshold_grid` (what calibrate and
evaluate run) on 1 device and on a ('data', 'model') mesh of every device, timed in
interleaved rounds, and checks that both give the same tokens and exit layers.

Printed per configuration: (threshold, example) pairs per second of wall time, and pairs
per CPU-second (time.process_time over all threads of the process). On a machine whose
devices are real (a GPU node, a TPU slice), the wall-clock ratio is the speedup. On a CPU
with simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, set here
when the flag is absent), the devices share the machine's cores, so wall time cannot speed
up; the CPU time then is the work all devices did together, and its ratio to the 1-device
run is the per-device overhead of sharding (the issue's bar: at most 1.15).

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
from calm_jax.decoding.generate import generate
from calm_jax.decoding.sharded import decode_mesh
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.model.config import T5Config
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


def main(argv):
  del argv
  config, params = _model()
  rng = np.random.default_rng(0)
  ids = rng.integers(3, config.vocab_size, (_EXAMPLES.value, _INPUT_LEN.value)).astype(np.int32)
  mask = np.ones_like(ids)
  thresholds = _thresholds(config, params, ids, mask)
  meshes = {"1 device": None,
            "mesh": decode_mesh(MeshConfig(data=-1, model=_MODEL.value))}
  decode = lambda mesh: decode_threshold_grid(
      config, params, ids, mask, thresholds=thresholds, exit=ExitConfig(measure="softmax_diff"),
      max_decode_len=_DECODE_LEN.value, batch_size=_BATCH.value or None, mesh=mesh)
  results = {name: decode(mesh) for name, mesh in meshes.items()}  # compiles, and compared
  one, sharded = results["1 device"], results["mesh"]
  assert np.array_equal(one.tokens, sharded.tokens), "tokens differ"
  assert np.array_equal(one.exit_layers, sharded.exit_layers), "exit layers differ"
  fns = {name: (lambda mesh=mesh: decode(mesh)) for name, mesh in meshes.items()}
  wall, _ = interleaved(fns, _ROUNDS.value, clock="wall")
  cpu, _ = interleaved(fns, _ROUNDS.value, clock="cpu")
  pairs = thresholds.size * _EXAMPLES.value
  print(f"{jax.device_count()} {jax.default_backend()} devices; {meshes['mesh'].describe()}; "
        f"shape {_SHAPE.value}; {_EXAMPLES.value} examples x {thresholds.size} thresholds = "
        f"{pairs} pairs ({one.decoded_pairs} decoded, the rest copied); mean exit layer "
        f"{one.exit_layers[one.exit_layers > 0].mean():.2f} of {one.num_layers}")
  for name in meshes:
    print(f"  {name:9s} {pairs / wall[name]:8.1f} pairs/s wall   "
          f"{pairs / cpu[name]:8.1f} pairs per CPU-second")
  print(f"wall speedup of the mesh: {wall['1 device'] / wall['mesh']:.2f}x; CPU work of the "
        f"mesh / 1 device: {cpu['mesh'] / cpu['1 device']:.2f} (per-device overhead; "
        "bar 1.15)")


if __name__ == "__main__":
  app.run(main)
