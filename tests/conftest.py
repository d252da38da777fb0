import os
import sys

import pytest

# Tests never reach the network: Hub lookups fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The repository root, for `configs`; tests/ itself is not on the path: test modules import
# no test module or helper, they share fixtures through conftest.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs_after_each_module():
  """Frees JAX's compiled programs after every test module: the suite compiles thousands of
  programs, and a single long process that keeps them all once crashed inside XLA's
  compiler late in the run."""
  yield
  jax = sys.modules.get("jax")  # only if a test imported it (some must run without JAX)
  if jax is not None:
    jax.clear_caches()


@pytest.fixture
def demo_config():
  """Makes the demo config of the mode tests, locked: decode mode, 3 examples, 5 output
  positions, a 3-layer decoder, exit threshold `threshold`."""
  def make(threshold=0.9):
    from configs import demo  # pylint: disable=import-outside-toplevel
    config = demo.get_config()
    config.mode = "decode"
    config.data.num_examples = 3
    config.decode.max_decode_len = 5
    config.model.num_decoder_layers = 3
    config.exit.threshold = threshold
    config.lock()
    return config
  return make


@pytest.fixture
def evaluate_config(demo_config):
  """Makes the demo config in evaluate mode, locked: 8 calibration examples under 3
  thresholds (token agreement), 6 test examples, 6 output positions, `evaluate` fields
  replaced."""
  def make(**evaluate):
    config = demo_config()
    config.unlock()
    config.mode = "evaluate"
    config.decode.max_decode_len = 6
    # The recomputation in the evaluate test scores token agreement, whatever the demo
    # calibrates with.
    config.calibration.update(num_examples=8, thresholds=(1.0, 0.5, 0.2), deltas=(0.1, 0.5),
                              num_splits=2, similarity="token_agreement")
    config.evaluate.update({**dict(measures=("softmax_diff",), num_examples=6,
                                   static_layers=(1,), oracle=True, timing_rounds=5,
                                   latency_examples=2),
                            **evaluate})
    config.lock()
    return config
  return make


@pytest.fixture
def random_layer_inputs():
  """Makes one layer's `LayerInputs` for a measure, from random states [batch, width] and
  logits [batch, vocab] (2 x standard normal): returns (inputs, hidden, logits), the last
  two as NumPy float32."""
  def make(layer=2, batch=5, width=7, vocab=11, seed=0, final_top1=None):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from calm_jax.decoding.measures import LayerInputs  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(seed)
    hidden = rng.randn(batch, width).astype(np.float32)
    logits = (2.0 * rng.randn(batch, vocab)).astype(np.float32)
    inputs = LayerInputs(
        layer=jnp.int32(layer), hidden=jnp.asarray(hidden), logits=jnp.asarray(logits),
        final_top1=None if final_top1 is None else jnp.asarray(final_top1, jnp.int32))
    return inputs, hidden, logits
  return make


@pytest.fixture
def assert_mixed_batch_equals_each_alone():
  """Checks that a batch whose rows use thresholds around `lam` (so their exit layers
  differ) decodes every row exactly as that row alone: tokens, exit layers and the
  confidence trace. Called as check(model, exit_config, lam, max_decode_len) with model =
  (config, params, ids, mask, greedy tokens)."""
  def check(model, exit_config, lam: float, max_decode_len: int):
    import dataclasses  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from calm_jax.decoding.generate import (  # pylint: disable=import-outside-toplevel
        generate, generate_with_thresholds)
    config, params, ids, mask, _ = model
    thresholds = [lam, 0.7 * lam, 1.0, 1.3 * lam]
    both = jax.tree.map(np.asarray, generate_with_thresholds(
        config, params, ids, mask, thresholds=thresholds, exit=exit_config,
        max_decode_len=max_decode_len, return_trace=True))
    generated = both.exit_layers > 0
    assert any(len(np.unique(both.exit_layers[generated[:, t], t])) > 1
               for t in range(max_decode_len))
    for row, threshold in enumerate(thresholds):
      alone = jax.tree.map(np.asarray, generate(
          config, params, ids[row:row + 1], mask[row:row + 1],
          exit=dataclasses.replace(exit_config, threshold=threshold),
          max_decode_len=max_decode_len, return_trace=True))
      np.testing.assert_array_equal(alone.tokens[0], both.tokens[row], err_msg=f"row {row}")
      np.testing.assert_array_equal(alone.exit_layers[0], both.exit_layers[row])
      # Confidences agree to float32 rounding (a batch and a row alone run differently
      # blocked kernels; a top-1 minus top-2 difference loses digits to cancellation: up
      # to 1.1e-5 seen for softmax_pruned); a wrong state or layer moves them by ~0.1.
      np.testing.assert_allclose(alone.trace[0], both.trace[row], atol=5e-5)
  return check


@pytest.fixture(scope="module")
def classifier_model(eos_batch):
  """The learned exit classifiers' tiny model: a random 5-layer T5 (gated-GELU, untied head,
  d_model 16, weights x1.5; `base_config`), a batch of 4 inputs of 7 tokens (row 1 padded
  after 4), `config` with an EOS that row 0 emits at output position 4 of 8 (so that some
  rows stop early), and `heads`: one random head per classifier with `options`, scaled x2
  so that their confidences spread over (0, 1)."""
  import types  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from calm_jax.exit_classifiers.registry import (  # pylint: disable=import-outside-toplevel
      init_classifier)
  from calm_jax.model.config import T5Config  # pylint: disable=import-outside-toplevel
  from calm_jax.model.t5 import init_params  # pylint: disable=import-outside-toplevel
  base = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                  num_decoder_layers=5, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
  options = {"meta_linear": {}, "meta_mlp": {"hidden_width": 12},
             "three_state_mlp": {"hidden_width": 8}, "lstm": {"num_layers": 2, "width": 8},
             "attention": {"width": 8, "num_heads": 2}}
  max_decode_len, batch = 8, 4
  params = jax.tree.map(lambda w: w * 1.5, init_params(base, jax.random.PRNGKey(3)))
  config, _, ids, mask, _ = eos_batch(base, params, max_decode_len, batch, eos_position=4)
  heads = {name: jax.tree.map(lambda w: 2.0 * w, init_classifier(
      name, base, jax.random.PRNGKey(7), **options[name])) for name in sorted(options)}
  return types.SimpleNamespace(base_config=base, config=config, params=params, ids=ids,
                               mask=mask, heads=heads, options=options,
                               max_decode_len=max_decode_len)


@pytest.fixture
def tiny_config():
  """The training tests' tiny T5 over the byte vocabulary: one encoder layer, three decoder
  layers, d_model 16, gated-GELU, untied head, no dropout."""
  from calm_jax.data import byte_vocab  # pylint: disable=import-outside-toplevel
  from calm_jax.model.config import T5Config  # pylint: disable=import-outside-toplevel
  return T5Config(vocab_size=byte_vocab.VOCAB_SIZE, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                  num_decoder_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, scale_decoder_outputs=False, dropout_rate=0.0)


@pytest.fixture
def tiny_data():
  """Makes the training tests' copy task: `count` random words of 2-5 letters a-f, inputs
  "copy: <word>" (12 bytes) and targets the word (7 bytes), as EncodedExamples."""
  def make(count=16, seed=0):
    import numpy as np  # pylint: disable=import-outside-toplevel
    from calm_jax.data import byte_vocab  # pylint: disable=import-outside-toplevel
    from calm_jax.training.data import EncodedExamples  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdef"), rng.integers(2, 6))) for _ in range(count)]
    inputs, _ = byte_vocab.encode_batch([f"copy: {w}" for w in words], 12)
    targets, _ = byte_vocab.encode_batch(words, 7)
    return EncodedExamples(inputs=inputs, targets=targets)
  return make


@pytest.fixture(scope="session")
def t5_v10():
  """transformers.T5Config values of a tiny T5 v1.0: ReLU FFN, tied and scaled head, unequal
  depth (2 encoder, 3 decoder layers), num_heads * d_kv != d_model. Read-only."""
  import types  # pylint: disable=import-outside-toplevel
  return types.MappingProxyType(dict(
      vocab_size=61, d_model=16, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3,
      num_heads=3, feed_forward_proj="relu", relative_attention_num_buckets=8,
      relative_attention_max_distance=20))


@pytest.fixture(scope="session")
def t5_v11():
  """transformers.T5Config values of a tiny T5 v1.1 / Flan-T5: gated-GELU FFN, untied head
  without output scaling, 3 encoder and 4 decoder layers. Read-only."""
  import types  # pylint: disable=import-outside-toplevel
  return types.MappingProxyType(dict(
      vocab_size=67, d_model=20, d_kv=4, d_ff=24, num_layers=3, num_decoder_layers=4,
      num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      relative_attention_num_buckets=10, relative_attention_max_distance=16))


@pytest.fixture(scope="session")
def t5_versions(t5_v10, t5_v11):
  """The tiny T5 values by version name, "v1.0" and "v1.1" (for parametrized fixtures)."""
  return {"v1.0": t5_v10, "v1.1": t5_v11}


@pytest.fixture(scope="session")
def random_hf_t5():
  """Makes a random transformers T5ForConditionalGeneration in eval mode (dropout off):
  random_hf_t5(seed=0, scale=1.0, **T5Config values); a LongT5ForConditionalGeneration when
  the values name an `encoder_attention_type`. Weights are redrawn at larger scales
  than transformers' initialisation (std scale / sqrt(fan_in); norms 1 + 0.2 N(0, 1);
  embedding and head N(0, 1)) so that outputs depend on the input; generation tests use
  scale 1.5 so that greedy outputs also vary from token to token."""
  def make(seed: int = 0, scale: float = 1.0, **overrides):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    torch.manual_seed(seed)
    values = dict(decoder_start_token_id=0, dropout_rate=0.0)
    values.update(overrides)
    family = "LongT5" if "encoder_attention_type" in values else "T5"
    config = getattr(transformers, f"{family}Config")(**values)
    model = getattr(transformers, f"{family}ForConditionalGeneration")(config).eval()
    with torch.no_grad():
      for name, param in model.named_parameters():
        if param.ndim == 1:
          param.copy_(1.0 + 0.2 * torch.randn_like(param))
        elif name.startswith("shared") or name.startswith("lm_head"):
          param.normal_(0.0, 1.0)
        else:
          param.normal_(0.0, scale / param.shape[-1] ** 0.5)
    return model
  return make


@pytest.fixture(scope="session")
def save_random_hf_t5(random_hf_t5):
  """Makes random_hf_t5(seed, scale, **overrides), saves it with `save_pretrained` to
  `directory` and returns it: save_random_hf_t5(directory, seed=0, scale=1.0, **values)."""
  def save(directory, seed: int = 0, scale: float = 1.0, **overrides):
    model = random_hf_t5(seed, scale, **overrides)
    model.save_pretrained(str(directory))
    return model
  return save


@pytest.fixture(scope="module", params=["v1.0", "v1.1"])
def imported_t5(request, tmp_path_factory, t5_versions, save_random_hf_t5):
  """A random transformers T5 of each version (seed 5, weights x1.5, so that greedy outputs
  vary from token to token), saved and imported with load_hf_t5: (transformers model,
  T5Config, params)."""
  from calm_jax.model.hf_import import load_hf_t5  # pylint: disable=import-outside-toplevel
  directory = tmp_path_factory.mktemp(request.param)
  model = save_random_hf_t5(directory, seed=5, scale=1.5, **t5_versions[request.param])
  config, params = load_hf_t5(str(directory))
  return model, config, params


@pytest.fixture(scope="session")
def analyze_config():
  """Makes the demo config in analyze mode, locked: 5 output positions, a 3-layer decoder,
  6 examples (2 easy, 2 difficult), after-layers (0, 1), rank cutoffs (1, 10), `analysis`
  fields replaced."""
  def make(**analysis):
    from configs import demo  # pylint: disable=import-outside-toplevel
    config = demo.get_config()
    config.mode = "analyze"
    config.decode.max_decode_len = 5
    config.model.num_decoder_layers = 3
    config.analysis.update({**dict(num_examples=6, num_easy=2, num_difficult=2,
                                   after_layers=(0, 1), rank_cutoffs=(1, 10)), **analysis})
    config.lock()
    return config
  return make


@pytest.fixture(scope="session")
def eos_batch():
  """Makes a decoding batch for a tiny model (config, params): `batch` rows of 7 random ids
  (row 1 padded after 4), the config with an EOS that row 0's greedy output emits at
  `eos_position` (so rows stop at different positions), and the full model's greedy
  output: (config, params, ids, mask, greedy [batch, decode_len])."""
  def make(config, params, decode_len=8, batch=4, eos_position=5):
    import numpy as np  # pylint: disable=import-outside-toplevel
    from calm_jax.decoding.greedy import greedy_decode  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(1)
    ids = rng.randint(2, config.vocab_size, (batch, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, 4:], mask[1, 4:] = 0, 0
    free = np.asarray(greedy_decode(config, params, ids, mask, max_decode_len=decode_len))
    config = config.replace(eos_token_id=int(free[0, eos_position]))
    greedy = np.asarray(greedy_decode(config, params, ids, mask, max_decode_len=decode_len))
    return config, params, ids, mask, greedy
  return make


@pytest.fixture(scope="session")
def padded_inputs():
  """Makes 4 random input rows of 13 ids in [2, vocab), row 2 padded after 7:
  (ids, mask), both [4, 13]."""
  def make(vocab, seed=0):
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, vocab, (4, 13))
    mask = np.ones_like(ids)
    mask[2, 7:] = 0
    ids[2, 7:] = 0
    return ids, mask
  return make


@pytest.fixture
def no_model_loading(monkeypatch):
  """Makes any model loading or initialisation fail for the test (the run context's loader,
  the model source's loader, its HF import and its fresh init): settings checks must come
  first."""
  from calm_jax.model import source  # pylint: disable=import-outside-toplevel
  from calm_jax.modes import context  # pylint: disable=import-outside-toplevel

  def no_model(*args, **kwargs):
    raise AssertionError("model work started before the settings were checked")
  for module in (context, source):
    monkeypatch.setattr(module, "load_model", no_model)
  for name in ("init_params", "load_hf_t5"):
    monkeypatch.setattr(source, name, no_model)


@pytest.fixture
def task_config():
  """Makes the demo config on data.task `task`, tiny and locked: 2 decoder layers, 3 output
  positions, 8 train examples."""
  def make(task):
    from configs import demo  # pylint: disable=import-outside-toplevel
    config = demo.get_config()
    config.mode = "decode"
    config.data.task = task
    config.train.num_examples = 8
    config.decode.max_decode_len = 3
    config.model.num_decoder_layers = 2
    config.lock()
    return config
  return make


@pytest.fixture(scope="session")
def quick_random_params():
  """Makes random parameters for a T5Config without running init_params (whose eager ops
  take tens of seconds to compile on a busy CPU): the tree's shapes from jax.eval_shape,
  kernels normal with std fan_in**-0.5, the embedding and LM head normal with std
  `head_scale`, relative biases std d_model**-0.5, norm scales 1. Called as
  make(config, seed=0, head_scale=1.0)."""
  def make(config, seed=0, head_scale=1.0):
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from calm_jax.model.t5 import init_params  # pylint: disable=import-outside-toplevel
    shapes = jax.eval_shape(lambda key: init_params(config, key), jax.random.PRNGKey(0))
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
      name = jax.tree_util.keystr(path)
      if "scale" in name:
        return np.ones(leaf.shape, np.float32)
      if "relative_bias" in name:
        std = config.d_model ** -0.5
      elif "embedding" in name or "lm_head" in name:
        std = head_scale
      else:
        std = leaf.shape[-2] ** -0.5
      return (rng.standard_normal(leaf.shape) * std).astype(np.float32)
    return jax.tree_util.tree_map_with_path(fill, shapes)
  return make


@pytest.fixture(scope="session")
def jax_processes():
  """What the multi-device and multi-process tests share (XLA fixes the device count when
  JAX starts, so they run JAX in fresh processes): environment(devices) -> the environment
  of a process with that many simulated CPU devices and the repository on PYTHONPATH;
  result(output) -> the JSON a process printed after 'RESULT' (the output's tail is the
  assertion message when there is none); two_processes(script, arguments, directory) ->
  the results of `python -c script *arguments(coordinator address, process id)` run as
  processes 0 and 1 of a jax.distributed pair, two simulated devices each, their output
  logged to `directory`."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def environment(devices):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu", PYTHONPATH=root)

  def result(output):
    lines = [line for line in output.splitlines() if line.startswith("RESULT")]
    assert lines, output[-6000:]
    return json.loads(lines[0][len("RESULT"):])

  def free_port():
    with socket.socket() as s:
      s.bind(("localhost", 0))
      return s.getsockname()[1]

  def two_processes(script, arguments, directory):
    address = f"localhost:{free_port()}"
    logs = [open(os.path.join(directory, f"process_{i}.log"), "w+", encoding="utf-8")
            for i in range(2)]
    # Output goes to files: a full pipe would block one process inside a collective.
    workers = [subprocess.Popen([sys.executable, "-c", script, *arguments(address, i)],
                                cwd=root, env=environment(2), stdout=log,
                                stderr=subprocess.STDOUT, text=True)
               for i, log in enumerate(logs)]
    outs = []
    for worker, log in zip(workers, logs):
      worker.wait(timeout=900)
      log.seek(0)
      outs.append(result(log.read()))
      log.close()
    return outs
  return types.SimpleNamespace(root=root, environment=environment, result=result,
                               two_processes=two_processes)


@pytest.fixture
def saved_resume_keys(monkeypatch):
  """The keys every ResumeStore.save of this process writes, in order (the saves still
  happen); clear it before the run whose saves a test counts."""
  from calm_jax.modes import resume  # pylint: disable=import-outside-toplevel
  saved, original = [], resume.ResumeStore.save

  def recording_save(self, key, arrays):
    saved.append(key)
    original(self, key, arrays)
  monkeypatch.setattr(resume.ResumeStore, "save", recording_save)
  return saved
