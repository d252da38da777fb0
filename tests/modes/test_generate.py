"""The generate mode: input lines -> early-exit decoding in batches -> generate.jsonl."""

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from calm_jax import modes
from calm_jax.data import byte_vocab
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.exit_classifiers.registry import init_classifier
from calm_jax.exit_classifiers.storage import save_classifier
from calm_jax.model.source import load_model
from calm_jax.modes import generate as generate_mode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINES = ["copy: abc", "", "reverse: hello", "add: 12+30", "  ", "copy: xyz"]


def tiny_config(input_file, threshold=0.9, batch_size=2, prefix="", **exit_options):
  """The demo config shrunk to a 2+3-layer model, 5 output positions, in generate mode."""
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  config.mode = "generate"
  config.model.num_decoder_layers = 3
  config.data.max_input_len = 24
  config.decode.max_decode_len = 5
  config.exit.threshold = threshold
  for name, value in exit_options.items():
    setattr(config.exit, name, value)
  config.generate.input_file = str(input_file)
  config.generate.batch_size = batch_size
  config.generate.input_prefix = prefix
  config.lock()
  return config


def write_lines(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


def run_generate(tmp_path, config):
  path = modes.run(config, str(tmp_path / "work"))
  assert os.path.basename(path) == "generate.jsonl"
  assert not [f for f in os.listdir(tmp_path / "work") if f.startswith(".tmp-")]
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def direct_generate(config, texts, **kwargs):
  """The same inputs decoded in one call, without the mode."""
  model_config, params = load_model(config.model, config.seed)
  ids, mask = byte_vocab.encode_batch(texts, config.data.max_input_len)
  out = generate(model_config, params, ids, mask, max_decode_len=config.decode.max_decode_len,
                 exit=ExitConfig.from_section(config.exit), **kwargs)
  return np.asarray(out.tokens), np.asarray(out.exit_layers)


def check_records(records, texts, tokens, exit_layers):
  for record, text, row, layers in zip(records, texts, tokens, exit_layers, strict=True):
    layers = layers[layers > 0]
    assert record["input"] == text
    assert record["exit_layers"] == layers.tolist()
    assert record["output_ids"] == row[:len(layers)].tolist()
    assert record["output"] == byte_vocab.decode(row)
    assert record["mean_exit_layer"] == pytest.approx(layers.mean())


# ----------------------------------------------------------------------------- outputs

def test_batches_equal_one_call_and_blank_lines_are_skipped(tmp_path, capsys):
  # 4 inputs in batches of 3: the last batch is padded to 3 rows, then cut.
  config = tiny_config(write_lines(tmp_path / "in.txt", LINES), batch_size=3)
  records = run_generate(tmp_path, config)
  texts = [line for line in LINES if line.strip()]
  assert [r["line"] for r in records] == [1, 3, 4, 6]
  check_records(records, texts, *direct_generate(config, texts))
  out = capsys.readouterr().out
  assert "[generate] 3/4 inputs decoded" in out and "[generate] 4/4 inputs decoded" in out
  assert "2 blank line(s) skipped" in out and "mean exit layer" in out


def test_threshold_one_is_the_full_greedy_model(tmp_path):
  config = tiny_config(write_lines(tmp_path / "in.txt", LINES), threshold=1.0, batch_size=0)
  records = run_generate(tmp_path, config)
  texts = [line for line in LINES if line.strip()]
  model_config, params = load_model(config.model, config.seed)
  ids, mask = byte_vocab.encode_batch(texts, config.data.max_input_len)
  full = np.asarray(greedy_decode(model_config, params, ids, mask, max_decode_len=5))
  for record, row in zip(records, full, strict=True):
    assert record["output_ids"] == row[:len(record["output_ids"])].tolist()
    assert set(record["exit_layers"]) == {3} and record["mean_exit_layer"] == 3.0


def test_standard_input_and_the_input_prefix(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "stdin", io.StringIO("abc\r\nhello\r\n"))
  config = tiny_config("-", batch_size=2, prefix="copy: ")
  records = run_generate(tmp_path, config)
  assert [(r["line"], r["input"]) for r in records] == [(1, "abc"), (2, "hello")]
  check_records(records, ["abc", "hello"],
                *direct_generate(config, ["copy: abc", "copy: hello"]))


def test_long_inputs_are_cut_and_counted(tmp_path, capsys):
  long_line = "copy: " + "x" * 60
  config = tiny_config(write_lines(tmp_path / "in.txt", [long_line, "copy: ab", long_line]))
  records = run_generate(tmp_path, config)
  assert [r["input"] for r in records] == [long_line, "copy: ab", long_line]
  assert records[0]["output_ids"] == records[2]["output_ids"]
  assert "2 of 3 inputs were longer than data.max_input_len=24 ids and were cut" in (
      capsys.readouterr().out)


def test_learned_classifier_from_its_saved_directory(tmp_path):
  from configs import demo  # pylint: disable=import-outside-toplevel
  model_config, _ = load_model(tiny_config("x").model, demo.get_config().seed)
  params = init_classifier("meta_linear", model_config, jax.random.PRNGKey(3))
  directory = save_classifier(str(tmp_path / "classifier"), "meta_linear", params)
  config = tiny_config(write_lines(tmp_path / "in.txt", LINES[:4]), threshold=0.5,
                       measure="meta_linear", classifier_path=directory)
  records = run_generate(tmp_path, config)
  texts = [line for line in LINES[:4] if line.strip()]
  check_records(records, texts, *direct_generate(config, texts, classifier_params=params))


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("contents,text", [
    ("", r"holds no inputs \(0 blank line\(s\)\)"),
    ("\n  \n\n", r"holds no inputs \(3 blank line\(s\)\)"),
])
def test_empty_input_fails_clearly(tmp_path, contents, text):
  path = tmp_path / "in.txt"
  path.write_text(contents, encoding="utf-8")
  with pytest.raises(ValueError, match=r"generate.input_file='.*in.txt' " + text):
    modes.run(tiny_config(path), str(tmp_path / "work"))
  assert not os.path.exists(tmp_path / "work" / "generate.jsonl")


def test_missing_unreadable_and_unset_inputs_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="generate.input_file=.*nope.txt' does not exist"):
    modes.run(tiny_config(tmp_path / "nope.txt"), str(tmp_path / "work"))
  with pytest.raises(ValueError, match="is not a regular file"):
    modes.run(tiny_config(tmp_path), str(tmp_path / "work"))
  (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
  with pytest.raises(ValueError, match="is not UTF-8 text: byte 3 cannot be decoded"):
    modes.run(tiny_config(tmp_path / "latin1.txt"), str(tmp_path / "work"))
  with pytest.raises(ValueError, match="generate.input_file is empty: name a UTF-8 text file"):
    modes.run(tiny_config(""), str(tmp_path / "work"))
  with pytest.raises(ValueError, match=r"generate.batch_size must be an integer >= 0 .* got -1"):
    modes.run(tiny_config(tmp_path / "nope.txt", batch_size=-1), str(tmp_path / "work"))


def test_learned_measure_without_a_classifier_fails_clearly(tmp_path):
  config = tiny_config(write_lines(tmp_path / "in.txt", ["copy: a"]), measure="meta_mlp")
  with pytest.raises(ValueError, match="set exit.classifier_path"):
    modes.run(config, str(tmp_path / "work"))


def test_split_lines():
  lines = generate_mode.split_lines("a\r\n\nb c\n \n\x0cd\n")
  assert lines.texts == ["a", "b c", "\x0cd"] and lines.line_numbers == [1, 3, 5]
  assert lines.blank_lines == 2
  last = generate_mode.split_lines("only line, no break")
  assert last.texts == ["only line, no break"] and last.blank_lines == 0


def test_batch_slices():
  assert [(s.start, s.stop) for s in generate_mode.batch_slices(5, 2)] == [(0, 2), (2, 4),
                                                                            (4, 5)]
  assert [(s.start, s.stop) for s in generate_mode.batch_slices(5, 0)] == [(0, 5)]


# ----------------------------------------------------------------------------- main job

def test_main_reads_standard_input(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "calm_jax.main", "--config=configs/demo.py",
             f"--workdir={tmp_path}", "--config.mode=generate",
             "--config.generate.input_file=-", "--config.decode.max_decode_len=3",
             "--config.model.num_decoder_layers=2"]
  done = subprocess.run(command, cwd=ROOT, env=env, input="copy: ab\nadd: 1+2\n",
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  records = [json.loads(line) for line in open(tmp_path / "generate.jsonl", encoding="utf-8")]
  assert [r["input"] for r in records] == ["copy: ab", "add: 1+2"]
  assert all(1 <= layer <= 2 for r in records for layer in r["exit_layers"])
  assert "[generate] wrote" in done.stdout


# ------------------------------------------------------------------ adaptive threshold

def test_beta_mixture_refits_lambda_between_batches_on_the_real_rows(monkeypatch, capsys):
  """decode_in_batches with exit.adaptive_threshold='beta_mixture': each batch decodes at
  the lambda refitted from the earlier batches' verdicts, padding rows left out (a stub
  decoder returns hand-made verdicts; padding rows carry ones that would move the fit)."""
  from calm_jax.decoding.free_adaptive import AdaptiveThreshold  # pylint: disable=import-outside-toplevel
  from calm_jax.decoding.synchronized import SynchronizedOutput  # pylint: disable=import-outside-toplevel
  seen = []

  def verdicts(call, ids):
    """(confidences, agreed) [B, 12] of call number `call`; copies of row 0 (the padding
    of a short batch) all agree at confidence 0.01."""
    rng = np.random.default_rng(call)
    agreed = (rng.uniform(size=(len(ids), 12)) < 0.6).astype(np.int32)
    confidences = np.where(agreed == 1, rng.beta(8, 2, agreed.shape),
                           rng.beta(2, 5, agreed.shape))
    padding = np.all(ids == ids[:1], axis=1) & (np.arange(len(ids)) > 0)
    confidences[padding], agreed[padding] = 0.01, 1
    return confidences, agreed

  def stub(model_config, params, ids, mask, *, exit, **kwargs):  # pylint: disable=redefined-builtin
    del model_config, params, mask, kwargs
    seen.append(exit.threshold)
    confidences, agreed = verdicts(len(seen), ids)
    zeros = np.zeros(agreed.shape, np.int32)
    return SynchronizedOutput(tokens=zeros, exit_layers=zeros + 1, confidences=confidences,
                              deep_passes=np.zeros(len(ids), np.int32),
                              shallow_steps=np.zeros(len(ids), np.int32), deep_agreed=agreed)
  monkeypatch.setattr(generate_mode, "generate", stub)
  ids = np.arange(7 * 3).reshape(7, 3).astype(np.int32) + 1  # batches of 3: 3, 3, 1 + 2 copies
  exit_config = ExitConfig(decoding="synchronized", threshold=0.5,
                           adaptive_threshold="beta_mixture", adaptive_max_refits=3)
  generate_mode.decode_in_batches(None, None, ids, np.ones_like(ids), exit_config, None, 12, 3)
  printed = [float(line.rsplit(" ", 1)[1]) for line in capsys.readouterr().out.splitlines()]
  # The same lambdas from the real rows' verdicts alone.
  replay, expected = AdaptiveThreshold(threshold=0.5, target=0.9, max_refits=3), []
  last = np.repeat(ids[6:7], 3, axis=0)  # the short batch as decoded: padded to 3 rows
  for call, (rows, real) in enumerate(((ids[0:3], 3), (ids[3:6], 3), (last, 1)), start=1):
    confidences, agreed = verdicts(call, rows)
    expected.append(replay.observe(SynchronizedOutput(
        tokens=None, exit_layers=None, confidences=confidences[:real], deep_passes=None,
        shallow_steps=None, deep_agreed=agreed[:real])))
  assert seen == [0.5] + expected[:2] and replay.refits == 3
  np.testing.assert_allclose(printed, expected, rtol=1e-3)  # printed with 4 digits
  assert len(set(seen)) == 3
