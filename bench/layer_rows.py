"""What one decoder layer costs on R of a batch's B rows, inside a compiled loop.

Row compaction (decoding/early_exit.py, `DecodePlan.buckets`) runs each layer after some
examples have left on a bucket of rows gathered from the batch. This times, per layer, what
that costs against what the rows imply, at one shape (random weights; the cost does not
depend on their values):
  all B        the layer on every row in place (no gather): what lambda = 1 runs
  R gathered   R rows gathered from the batch, as a bucket of R rows runs (the rows change
               from one repeat to the next, as running rows do, so no gather is hoisted)
  B in passes  all B rows, R at a time, in a fori_loop of ceil(B / R) passes: what running
               more rows than a bucket holds in several passes of it would cost
Each figure is the median over interleaved rounds of one call that repeats the layer
--repeats times inside a fori_loop (so a call's dispatch is not counted), divided by the
repeats. Beside it: the bytes the layer reads (its weights, each row's cross- and
self-attention caches) and the rate that implies.

  .venv/bin/python bench/layer_rows.py --shape=demo --batch=200 --input_len=50 --decode_len=25
"""

import math
import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from bench.timing import SHAPES, interleaved  # noqa: E402
from calm_jax.decoding.cost_model import layer_weight_elements  # noqa: E402
from calm_jax.model.config import T5Config  # noqa: E402
from calm_jax.model.incremental import (decoder_layer_rows, init_decoder_cache,  # noqa: E402
                                        step_self_bias)
from calm_jax.model.layer_layout import to_per_layer  # noqa: E402
from calm_jax.model.t5 import encode, init_params  # noqa: E402

flags.DEFINE_enum("shape", "demo", list(SHAPES), "Model shape (bench/timing.py).")
flags.DEFINE_integer("batch", 200, "Rows of the batch (B).")
flags.DEFINE_integer("input_len", 50, "Input tokens (the cross-attention cache's length).")
flags.DEFINE_integer("decode_len", 25, "Output positions (the self-attention cache's length).")
flags.DEFINE_list("rows", ["100", "50", "25", "13", "4"], "Row counts R to time.")
flags.DEFINE_integer("layer", 1, "The 0-based decoder layer timed.")
flags.DEFINE_integer("repeats", 20, "Layer repeats inside one call.")
flags.DEFINE_integer("rounds", 9, "Interleaved timing rounds (medians).")
FLAGS = flags.FLAGS


class LayerRows:
  """One layer of a model over a batch's cache at the middle output position."""

  def __init__(self, shape: str, batch: int, input_len: int, decode_len: int):
    self.config = T5Config(**SHAPES[shape])
    self.params = to_per_layer(init_params(self.config, jax.random.PRNGKey(0)))
    ids = jax.random.randint(jax.random.PRNGKey(1), (batch, input_len), 2,
                             self.config.vocab_size)
    mask = jnp.ones_like(ids)
    encoded = encode(self.config, self.params, ids, mask)
    self.cache = init_decoder_cache(self.config, self.params, encoded, mask, decode_len,
                                    per_layer=True)
    self.self_bias = step_self_bias(self.config, self.params, jnp.int32(decode_len // 2),
                                    decode_len)  # the middle output position
    self.hidden = jax.random.normal(jax.random.PRNGKey(2), (batch, 1, self.config.d_model))
    self.batch = batch
    # What one row's caches hold at one layer: cross and self K and V, float32.
    self.row_bytes = 2 * self.config.inner_dim * (input_len + decode_len) * 4

  def _on_rows(self, params, cache, hidden, rows):  # [B, 1, d] with rows [R] updated
    part = decoder_layer_rows(self.config, params, cache, FLAGS.layer,
                              jnp.take(hidden, rows, axis=0), self.self_bias, rows)
    return hidden.at[rows].set(part)

  def _repeated(self, step):
    loop = lambda params, cache, hidden: jax.lax.fori_loop(
        0, FLAGS.repeats, lambda i, h: step(params, cache, h, i), hidden)
    compiled = jax.jit(loop)
    return lambda: compiled(self.params, self.cache, self.hidden)

  def all_rows(self):
    return self._repeated(lambda p, c, h, i: decoder_layer_rows(
        self.config, p, c, FLAGS.layer, h, self.self_bias))

  def gathered(self, count: int):
    stride = self.batch // count
    return self._repeated(lambda p, c, h, i: self._on_rows(
        p, c, h, (jnp.arange(count) * stride + i) % self.batch))

  def in_passes(self, count: int):
    passes = -(-self.batch // count)

    def step(p, c, h, i):
      del i
      def one_pass(k, out):
        start = jnp.minimum(k * count, self.batch - count)
        return self._on_rows(p, c, out, start + jnp.arange(count))
      return jax.lax.fori_loop(0, passes, one_pass, h)
    return self._repeated(step)

  def bytes_read(self, rows: int) -> int:
    """Weights once, plus each row's caches."""
    return layer_weight_elements(self.config) * 4 + rows * self.row_bytes


def main(_):
  bench = LayerRows(FLAGS.shape, FLAGS.batch, FLAGS.input_len, FLAGS.decode_len)
  batch, counts = FLAGS.batch, [int(r) for r in FLAGS.rows]
  whole = f"all {batch}"
  passes = {count: f"{batch} in {math.ceil(batch / count)} passes of {count}"
            for count in counts}
  runs = [(whole, batch, bench.all_rows())]  # (name, rows it runs, call)
  runs += [(f"{count} gathered", count, bench.gathered(count)) for count in counts]
  runs += [(passes[count], batch, bench.in_passes(count)) for count in counts]
  seconds, _ = interleaved({name: call for name, _, call in runs}, FLAGS.rounds)
  print(f"shape {FLAGS.shape}, batch {batch}, {FLAGS.input_len} inputs, "
        f"{FLAGS.decode_len} positions; one layer, median of {FLAGS.rounds} rounds of "
        f"{FLAGS.repeats} repeats")
  for name, rows, _ in runs:
    per_layer, read = seconds[name] / FLAGS.repeats, bench.bytes_read(rows)
    print(f"  {name:28s} {per_layer * 1e6:8.1f} us  {per_layer * 1e6 / rows:6.2f} us/row  "
          f"reads {read / 1e6:6.2f} MB ({read / per_layer / 1e9:5.1f} GB/s)")
  for count in counts:
    print(f"  {passes[count]}: {seconds[passes[count]] / seconds[whole]:.2f}x the layer on "
          "all rows at once")


if __name__ == "__main__":
  app.run(main)
