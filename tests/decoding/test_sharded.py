"""Decoding on a device mesh (calm_jax.decoding.sharded): on 8 simulated CPU devices (data=8;
data=4 x model=2), and on two processes joined by jax.distributed, tokens, exit layers and
confidences equal the 1-device decode, for measures of every kind of need, with a batch
that does not divide over the data shards, and through the threshold grid; plain greedy
decoding's tokens too.

XLA fixes the device count when JAX starts, so each comparison runs in fresh processes with
XLA_FLAGS=--xla_force_host_platform_device_count=N. The batch is 15 (example, threshold)
pairs, 5 examples x 3 thresholds, decoded with one threshold per row; the grid decodes the
5 examples under the 3 thresholds, so its pairs must equal the same rows.
"""

import json
import subprocess
import sys

import numpy as np


SCRIPT = r'''
import json, sys
import jax, numpy as np
# argv: "mesh" or "processes"; for one of two processes also the coordinator and its id
if sys.argv[1] == "processes":
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate_with_thresholds
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.sharded import decode_mesh, padded_batch
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.exit_classifiers.registry import init_classifier
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params
from calm_jax.training.sharding import MeshConfig

CONFIG = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                  num_decoder_layers=4, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, scale_decoder_outputs=False, dropout_rate=0.0)
PARAMS = init_params(CONFIG, jax.random.PRNGKey(0))
PARAMS["lm_head"]["kernel"] = PARAMS["lm_head"]["kernel"] * 0.3  # varied confidences
rng = np.random.default_rng(0)
IDS = rng.integers(2, 64, size=(5, 9)).astype(np.int32)
MASK = np.ones_like(IDS)
MASK[3, 5:] = 0
# Per measure: three thresholds that give a mix of exit layers on this model.
THRESHOLDS = {"softmax_diff": [0.3, 0.1, 0.03], "state_saturation": [0.9, 0.7, 0.5],
              "softmax_topk": [0.3, 0.1, 0.03], "attention": [0.53, 0.5, 0.47],
              "oracle": [1.0, 1.0, 1.0]}
ROWS = np.repeat(np.arange(5), 3)  # [15] example of each pair

def decode(measure, mesh=None):
  # softmax_diff decodes in the CPU's default layout (per-layer weights, which are placed
  # on the mesh stacked, then split); the others stacked.
  layout = "auto" if measure == "softmax_diff" else "stacked"
  exit_config = ExitConfig(measure=measure, top_k=8)
  classifier = (init_classifier("attention", CONFIG, jax.random.PRNGKey(1))
                if measure == "attention" else None)
  out = generate_with_thresholds(
      CONFIG, PARAMS, IDS[ROWS], MASK[ROWS], thresholds=np.tile(THRESHOLDS[measure], 5),
      exit=exit_config, max_decode_len=5, classifier_params=classifier,
      layer_layout=layout, mesh=mesh)
  return {f: np.asarray(getattr(out, f)).tolist()
          for f in ("tokens", "exit_layers", "confidences")}

def grid(mesh):
  out = decode_threshold_grid(CONFIG, PARAMS, IDS, MASK, thresholds=THRESHOLDS["softmax_diff"],
                              exit=ExitConfig(measure="softmax_diff"), max_decode_len=5,
                              batch_size=4, mesh=mesh)
  # [K, B, T] -> pair rows (example-major, as ROWS): [B * K, T]
  pairs = lambda a: np.swapaxes(a, 0, 1).reshape(15, -1).tolist()
  return {"tokens": pairs(out.tokens), "exit_layers": pairs(out.exit_layers),
          "confidences": pairs(out.confidences)}

out = {"devices": jax.device_count(), "process": jax.process_index()}
if sys.argv[1] == "processes":
  mesh = decode_mesh(MeshConfig(data=-1))
  out["describe"] = mesh.describe()
  out["softmax_diff"] = decode("softmax_diff", mesh)
  print("RESULT" + json.dumps(out))
  sys.exit(0)
data8, data4_model2 = decode_mesh(MeshConfig(data=8)), decode_mesh(MeshConfig(data=4, model=2))
out["describe"] = data4_model2.describe()
out["padded"] = padded_batch(15, data8)
out["one"], out["mesh"] = {}, {}
for measure, mesh in (("softmax_diff", data4_model2), ("state_saturation", data8),
                      ("softmax_topk", data4_model2), ("attention", data8),
                      ("oracle", data8)):
  out["one"][measure] = decode(measure)
  out["mesh"][measure] = decode(measure, mesh)
out["grid"] = grid(data4_model2)
greedy = lambda mesh: np.asarray(greedy_decode(CONFIG, PARAMS, IDS, MASK, max_decode_len=5,
                                               mesh=mesh)).tolist()
out["greedy"] = {"one": greedy(None), "mesh": greedy(data4_model2)}
print("RESULT" + json.dumps(out))
'''


def assert_same_decode(ours, expected, name):
  assert ours["tokens"] == expected["tokens"], name
  assert ours["exit_layers"] == expected["exit_layers"], name
  # Shards run other batch shapes: confidences agree to float32 rounding.
  np.testing.assert_allclose(ours["confidences"], expected["confidences"], atol=1e-6,
                             err_msg=name)


ONE_DEVICE = {}  # the 1-device decode, shared with the two-process test


def test_eight_devices_match_one_device(jax_processes):
  done = subprocess.run([sys.executable, "-c", SCRIPT, "mesh"], cwd=jax_processes.root,
                        env=jax_processes.environment(8), capture_output=True, text=True,
                        timeout=1200, check=False)
  out = jax_processes.result(done.stdout + done.stderr)
  ONE_DEVICE.update(out["one"])
  assert out["devices"] == 8 and out["padded"] == 16
  assert out["describe"] == "mesh data=4 model=2 over 1 process(es)"
  for name, expected in out["one"].items():
    exits = np.asarray(expected["exit_layers"])
    if name != "oracle":  # the thresholds give real early exits, and some late
      assert 1 in exits and 4 in exits, (name, exits)
    assert_same_decode(out["mesh"][name], expected, name)
  assert_same_decode(out["grid"], out["one"]["softmax_diff"], "grid")
  assert out["greedy"]["mesh"] == out["greedy"]["one"]


def test_two_processes_with_two_devices_each_match_one_device(tmp_path, jax_processes):
  """Two hosts (processes), each decoding its own rows, both given every row back."""
  outs = jax_processes.two_processes(SCRIPT, lambda address, i: ["processes", address, str(i)],
                                     tmp_path)
  assert [o["process"] for o in outs] == [0, 1] and outs[0]["devices"] == 4
  assert outs[0]["describe"] == "mesh data=4 model=1 over 2 process(es)"
  assert outs[0]["softmax_diff"] == outs[1]["softmax_diff"]
  expected = ONE_DEVICE.get("softmax_diff")
  if expected is None:  # run alone: the 1-device decode from the mesh script
    done = subprocess.run([sys.executable, "-c", SCRIPT, "mesh"], cwd=jax_processes.root,
                          env=jax_processes.environment(8), capture_output=True, text=True,
                          timeout=1200, check=False)
    expected = jax_processes.result(done.stdout + done.stderr)["one"]["softmax_diff"]
  assert_same_decode(outs[0]["softmax_diff"], expected, "two processes")
