"""Does the generated task family make early exit meaningful? Trains a tiny byte-level T5 on
it for a fixed wall-clock budget (CALM's anytime loss, as in tiny_calm_training), then
reports, on test examples under teacher forcing:

- per kind: token accuracy and sequence accuracy (every byte right = greedy exact match);
- for easy and hard target bytes (generated.hard_byte_mask; EOS counted separately): the
  accuracy and mean softmax_max confidence of every decoder layer's prediction through the
  shared exit head, the mean oracle exit layer (the first layer whose top-1 equals the last
  layer's) and the mean exit layer of softmax_max at lambda = 0.9.

Run: .venv/bin/python bench/generated_task_depth.py --seconds=240 --decoder_layers=6
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.tiny_calm_training import _anytime_loss  # pylint: disable=wrong-import-position
from calm_jax.data import byte_vocab, generated  # pylint: disable=wrong-import-position
from calm_jax.model.config import T5Config  # pylint: disable=wrong-import-position
from calm_jax.model.t5 import (decode_teacher_forced, encode, exit_logits,  # pylint: disable=wrong-import-position
                               init_params, shift_right)

INPUT_LEN, TARGET_LEN = 48, 24


def _encode(examples):
  ids, mask = byte_vocab.encode_batch([e.inputs for e in examples], INPUT_LEN)
  labels, _ = byte_vocab.encode_batch([e.targets for e in examples], TARGET_LEN)
  return ids, mask, labels


def _train(config, params, seconds, batch_size, learning_rate, seed):
  ids, mask, labels = (jnp.asarray(a) for a in _encode(generated.examples("train", 50_000,
                                                                          seed)))
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, 200, 20_000)
  optimizer = optax.adam(schedule)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, rows):
    loss, grads = jax.value_and_grad(
        lambda p: _anytime_loss(config, p, ids[rows], mask[rows], labels[rows]))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  start, steps, loss = time.time(), 0, float("nan")
  while time.time() - start < seconds:
    params, opt_state, loss = step(params, opt_state, rng.integers(0, len(ids), batch_size))
    steps += 1
    if steps % 200 == 0:
      print(f"step {steps}: loss {float(loss):.3f} ({time.time() - start:.0f} s)", flush=True)
  return params, steps, float(loss)


def _layer_predictions(config, params, examples):
  ids, mask, labels = _encode(examples)
  encoded = encode(config, params, jnp.asarray(ids), jnp.asarray(mask))
  states = decode_teacher_forced(config, params, shift_right(config, jnp.asarray(labels)),
                                 encoded, jnp.asarray(mask))  # [L, B, T, d]
  logits = jax.vmap(lambda h: exit_logits(config, params, h))(states)  # [L, B, T, V]
  confidence = jax.nn.softmax(logits, axis=-1).max(-1)  # softmax_max, [L, B, T]
  return np.asarray(logits.argmax(-1)), np.asarray(confidence), labels


def _roles(examples):
  """[B, T] role per target position: 0 easy byte, 1 hard byte, 2 EOS, -1 padding."""
  roles = np.full((len(examples), TARGET_LEN), -1, np.int32)
  for row, example in enumerate(examples):
    mask = generated.hard_byte_mask(example)
    roles[row, :len(mask)] = mask
    roles[row, len(mask)] = 2
  return roles


def _report(config, params, count):
  examples = generated.examples("test", count, seed=0)
  predicted, confidence, labels = _layer_predictions(config, params, examples)
  final = predicted[-1]
  right = final == labels  # [B, T]
  valid = labels != byte_vocab.PAD_ID
  kinds = np.array([e.kind for e in examples])
  print("\nkind        token acc  sequence acc")
  for kind in generated.KINDS:
    rows = kinds == kind
    token_acc = right[rows][valid[rows]].mean()
    sequence_acc = np.all(right[rows] | ~valid[rows], axis=1).mean()
    print(f"{kind:11} {token_acc:9.3f} {sequence_acc:13.3f}")
  num_layers = predicted.shape[0]
  agrees = predicted == final[None]  # [L, B, T]
  oracle = np.argmax(agrees, axis=0) + 1  # first layer agreeing with the last, [B, T]
  roles = _roles(examples)
  # softmax_max exit at lambda = 0.9: the first layer whose confidence clears it (L if none).
  clears = confidence >= 0.9
  exit_09 = np.where(clears.any(0), np.argmax(clears, axis=0) + 1, num_layers)  # [B, T]
  print("\nrole  count  oracle exit  exit@0.9  accuracy per layer 1..L  |  mean softmax_max")
  for role, name in enumerate(("easy", "hard", "eos")):
    where = roles == role
    per_layer = [(predicted[i] == labels)[where].mean() for i in range(num_layers)]
    mean_conf = [confidence[i][where].mean() for i in range(num_layers)]
    print(f"{name:5} {where.sum():6d} {oracle[where].mean():11.2f} {exit_09[where].mean():9.2f}"
          "  " + " ".join(f"{acc:.2f}" for acc in per_layer) + "  |  "
          + " ".join(f"{c:.2f}" for c in mean_conf))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seconds", type=float, default=240.0)
  parser.add_argument("--decoder_layers", type=int, default=6)
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--eval_examples", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  config = T5Config(vocab_size=byte_vocab.VOCAB_SIZE, d_model=args.d_model,
                    d_kv=args.d_model // 4, d_ff=2 * args.d_model, num_layers=2,
                    num_decoder_layers=args.decoder_layers, num_heads=4, dropout_rate=0.0,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    scale_decoder_outputs=False)
  params = init_params(config, jax.random.PRNGKey(args.seed))
  params, steps, loss = _train(config, params, args.seconds, args.batch_size,
                               args.learning_rate, args.seed)
  print(f"trained {steps} steps in {args.seconds:.0f} s; last anytime loss {loss:.3f}")
  _report(config, params, args.eval_examples)


if __name__ == "__main__":
  main()
