"""Training throughput of the demo-size model, and the cost of CALM's anytime loss.

Times the jitted train step (loss, gradients, optimizer update) of configs/demo.py's model
on generated examples at the demo's batch size, with the anytime loss ('calm' weights, every
layer through the exit head) and with ordinary last-layer training ('last'), alternating
the two so both see the same machine load. Prints target tokens/s of each and the anytime
loss's overhead (target: under 25%).

  .venv/bin/python bench/training_speed.py [--steps=30] [--rounds=5] [--config.x=y]
"""

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from calm_jax.model.source import load_model
from calm_jax.modes.context import run_context
from calm_jax.modes.training_setup import optimizer_from, training_data
from calm_jax.training.data import device_batch
from calm_jax.training.loop import make_train_step
from calm_jax.training.objectives import AnytimeObjective, anytime_loss
from calm_jax.training.optimizers import make_optimizer

config_flags.DEFINE_config_file("config", os.path.join(os.path.dirname(__file__), "..",
                                                       "configs", "demo.py"),
                                "The run config whose model and batch are timed.")
flags.DEFINE_integer("steps", 30, "Train steps per timed round.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds per objective (median reported).")
FLAGS = flags.FLAGS


def make_step(model_config, weighting, optimizer):
  objective = AnytimeObjective(layer_weighting=weighting)
  loss_fn = lambda params, frozen, batch, rng: anytime_loss(model_config, objective, params,
                                                            batch, rng=rng)
  return jax.jit(make_train_step(loss_fn, optimizer), donate_argnums=0)


def run_round(step, state, batches, key):
  start = time.perf_counter()
  for i, batch in enumerate(batches):
    state, metrics = step(state, None, batch, jax.random.fold_in(key, i))
  jax.block_until_ready(metrics["loss"])
  return state, time.perf_counter() - start


def main(argv):
  del argv
  config = FLAGS.config
  model_config, params = load_model(config.model, config.seed)
  data = training_data(run_context(config, ""), model_config.vocab_size)
  optimizer = make_optimizer(optimizer_from(config.train))
  batch_size = config.train.batch_size
  on_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  batches = [device_batch(data, s, batch_size, config.seed, on_device)
             for s in range(FLAGS.steps)]
  tokens_per_round = sum(int((np.asarray(b.targets) != 0).sum()) for b in batches)
  steps = {w: make_step(model_config, w, optimizer) for w in ("calm", "last")}
  states = {w: {"params": jax.tree.map(lambda a: a.copy(), params),
                "opt_state": optimizer.init(params)} for w in steps}
  key = jax.random.PRNGKey(0)
  for weighting in steps:  # compile and warm up
    states[weighting], _ = run_round(steps[weighting], states[weighting], batches[:2], key)
  times = {w: [] for w in steps}
  for _ in range(FLAGS.rounds):
    for weighting in steps:
      states[weighting], seconds = run_round(steps[weighting], states[weighting], batches, key)
      times[weighting].append(seconds)
  median = {w: float(np.median(t)) for w, t in times.items()}
  print(f"model: {model_config.num_layers}+{model_config.num_decoder_layers} layers, d_model "
        f"{model_config.d_model}, vocab {model_config.vocab_size}; batch {batch_size}; "
        f"{FLAGS.steps} steps x {FLAGS.rounds} rounds; {jax.devices()[0].platform}")
  for weighting, label in (("last", "last layer only"), ("calm", "anytime (calm weights)")):
    print(f"  {label:24} {FLAGS.steps / median[weighting]:7.2f} steps/s  "
          f"{tokens_per_round / median[weighting]:9.0f} target tokens/s")
  overhead = median["calm"] / median["last"] - 1
  print(f"  anytime-loss overhead: {100 * overhead:+.1f}% (target < 25%)")


if __name__ == "__main__":
  app.run(main)
