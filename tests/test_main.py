"""calm_jax/main.py: --config.* overrides reach the run; every expected failure (a bad flag,
setting, workdir, data split, vocabulary, memory estimate) stops the main job with one line
`calm_jax: error: <message>` on stderr and exit status 1 before any model work, and leaves
no files; --debug shows the traceback; --help lists the modes; --print_config prints the
resolved config."""

import os
import re
import subprocess
import sys
import time

import pytest

from calm_jax import main as main_module
from configs.dataset import DATASETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = "--config=configs/demo.py"


def run_main(*args, env=None, stdin=None):
  """The main job in a new process (as a user starts it)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([sys.executable, "-m", "calm_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, stdin=stdin)


@pytest.fixture
def cli(monkeypatch, capsys):
  """Runs the main job's entry in this process: (exit status, stdout, stderr). Each call
  parses its own flags (the config's override flags of the last call are dropped)."""
  monkeypatch.chdir(ROOT)

  def call(*args):
    flags = main_module.FLAGS
    flags.unparse_flags()
    for name in [n for n in flags if n.startswith("config.")]:
      delattr(flags, name)
    monkeypatch.setattr(sys, "argv", ["calm_jax", *args])
    with pytest.raises(SystemExit) as stopped:
      main_module.cli()
    captured = capsys.readouterr()
    return stopped.value.code or 0, captured.out, captured.err
  return call


def one_line_error(status: int, err: str) -> str:
  """The message of a one-line failure (status 1, nothing else on stderr)."""
  assert status == 1, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("calm_jax: error: "), err
  return lines[0][len("calm_jax: error: "):]


# Bad inputs of the demo config, each refused by a check before any model work: the flags,
# then the message (a regex).
BAD_RUNS = [
    (("--config.decode.max_decode_len=0", "--config.mode=train"),
     r"^decode.max_decode_len must be an integer >= 1 \(output positions per example\), got 0$"),
    (("--config.exit.measure=softmax_topk", "--config.exit.top_k=0", "--config.mode=decode"),
     r"^exit.top_k=0 must be an integer in \[2, 259\] \(the vocabulary size\) for measure "
     r"'softmax_topk'$"),
    (("--config.exit.min_exit_layer=9",),  # mode all: train_exit's setting, checked first
     r"^exit.min_exit_layer=9 must be in \[1, 6\] \(the decoder has 6 layers\)$"),
    (("--config.data.test_split=nonsense",),  # mode all: evaluate's split, checked first
     r"^data.test_split='nonsense' of data.task='generated': split='nonsense' is not a split "),
    (("--config.model.vocab_size=512", "--config.mode=calibrate"),
     r"^model has 512 ids, data.vocabulary 'byte' has 259: pass the checkpoint's tokenizer "
     r"directory in data.vocabulary"),
    (("--config.model.checkpoint=/no/such/export", "--config.mode=decode"),
     r"^model.checkpoint='/no/such/export' is not a calm_jax params export"),
    (("--config.mode=generate",),
     r"^generate.input_file is empty: name a UTF-8 text file"),
    (("--config.mode=fly",), r"^config.mode='fly' is not a mode; allowed: decode"),
    (("--config.train.batch_size=4096", "--config.data.max_input_len=4096",
      "--config.mode=train"),
     r"^train needs about [\d.]+ GiB on all devices together \(parameters [\d.]+ GiB, .*"
     r"activations [\d.]+ GiB; batch 4096, input length 4096, target length 25\) but there "
     r"is [\d.]+ GiB \(host RAM, 1 device\(s\)\); lower train.batch_size, data.max_input_len "
     r"or decode.max_decode_len, or set --config.memory_check=False to run anyway$"),
    (("--config.exit.threshhold=0.5",),
     r"^--config.exit.threshhold: the config has no field 'threshhold'; Did you mean "
     r"\"threshold\" instead of \"threshhold\"\?$"),
    (("--config.exit.threshold=abc",),
     r"^flag --config.exit.threshold=abc: could not convert string to float: 'abc'$"),
    (("decode",), r"^unexpected arguments: decode \(flags take the form --name=value\)$"),
]


@pytest.mark.parametrize("args,message", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_a_bad_setting_is_one_line_before_any_model_work(tmp_path, no_model_loading, cli,
                                                         args, message):
  workdir = tmp_path / "run"
  status, _, err = cli(DEMO, f"--workdir={workdir}", *args)
  assert re.search(message, one_line_error(status, err))
  assert not workdir.exists()


def test_a_bad_workdir_is_named(tmp_path, no_model_loading, cli, monkeypatch):
  afile = tmp_path / "afile"
  afile.write_text("x")
  status, _, err = cli(DEMO, f"--workdir={afile}", "--config.mode=decode")
  assert one_line_error(status, err) == (f"--workdir={afile} is a file, not a directory; "
                                         "name a directory (it is created if missing)")
  from calm_jax.modes import context  # pylint: disable=import-outside-toplevel

  def refused(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(context.tempfile, "mkstemp", refused)  # root may write anywhere
  status, _, err = cli(DEMO, f"--workdir={tmp_path}/ro", "--config.mode=decode")
  assert one_line_error(status, err) == (f"--workdir={tmp_path}/ro is not writable "
                                         f"({tmp_path}: Permission denied); name a directory "
                                         "you can write to")


def test_generate_with_standard_input_closed_says_so(tmp_path, no_model_loading, cli,
                                                     monkeypatch):
  monkeypatch.setattr(sys, "stdin", None)
  status, _, err = cli(DEMO, f"--workdir={tmp_path}", "--config.mode=generate",
                       "--config.generate.input_file=-")
  assert one_line_error(status, err) == (
      "generate.input_file='-' reads standard input, but this process has none (it is "
      "closed); pipe the inputs in or name a text file")


def test_debug_shows_the_traceback(tmp_path, no_model_loading, cli, monkeypatch):
  with pytest.raises(ValueError, match="decode.max_decode_len must be an integer >= 1"):
    cli(DEMO, f"--workdir={tmp_path}", "--config.decode.max_decode_len=0", "--debug")
  monkeypatch.setenv("CALM_JAX_DEBUG", "1")
  with pytest.raises(ValueError, match="decode.max_decode_len must be an integer >= 1"):
    cli(DEMO, f"--workdir={tmp_path}", "--config.decode.max_decode_len=0")


def test_help_lists_every_mode_and_print_config_prints_the_resolved_config(cli):
  from calm_jax import modes  # pylint: disable=import-outside-toplevel
  status, out, _ = cli("--help")
  assert status == 0
  for name in modes.MODES:
    assert f"\n  {name} " in out
  assert "--print_config" in out and len(out.splitlines()) < 40
  status, out, err = cli(DEMO, "--print_config", "--config.exit.threshold=0.25",
                         "--config.mode=decode")
  assert status == 0, err
  assert "threshold: 0.25" in out and "mode: decode" in out and "max_decode_len: 25" in out
  status, _, err = cli(DEMO)
  assert one_line_error(status, err) == ("--workdir is required; --help lists the flags and "
                                         "modes")


def test_a_bare_dataset_config_fails_in_seconds_before_any_compile(tmp_path):
  """As a newcomer runs it: one line naming what is missing, no compile (JAX logs every
  compile with jax_log_compiles), nothing written."""
  start = time.perf_counter()
  done = run_main("--config=configs/cnndm.py", f"--workdir={tmp_path}/run",
                  env={"JAX_LOG_COMPILES": "1"})
  elapsed = time.perf_counter() - start
  message = one_line_error(done.returncode, done.stderr)
  assert message == ("model has 32128 ids, data.vocabulary 'byte' has 259: pass the "
                     "checkpoint's tokenizer directory in data.vocabulary (or a model of that "
                     "vocabulary size: model.vocab_size=259)")
  assert "Compiling" not in done.stderr and elapsed < 120
  assert not os.path.exists(tmp_path / "run")


def test_main_flags_override_and_the_run_says_what_it_loaded(tmp_path):
  done = run_main(DEMO, f"--workdir={tmp_path}", "--config.mode=decode",
                  "--config.data.num_examples=2", "--config.decode.max_decode_len=3",
                  "--config.model.num_decoder_layers=1")
  assert done.returncode == 0, done.stderr
  assert len(open(tmp_path / "decode.jsonl", encoding="utf-8").readlines()) == 2
  assert "[decode] model: fresh random initialisation (seed 0, untrained)" in done.stdout
  assert "runs a randomly initialised, untrained model" in done.stderr
  assert sorted(os.listdir(tmp_path)) == ["decode.jsonl", "run_record.json"]


def test_running_out_of_device_memory_is_one_line_with_what_to_lower(tmp_path, cli,
                                                                     monkeypatch):
  def out_of_memory(config, workdir):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 88069114632 bytes.\n"
                       "(the rest of XLA's report)")
  monkeypatch.setattr(main_module.modes, "run", out_of_memory)
  status, _, err = cli(DEMO, f"--workdir={tmp_path}")
  assert one_line_error(status, err) == (
      "RESOURCE_EXHAUSTED: Out of memory allocating 88069114632 bytes. (lower the batch size "
      "or the lengths: train.batch_size, data.max_input_len, decode.max_decode_len)")
  monkeypatch.setattr(main_module.modes, "run", lambda config, workdir: 1 / 0)
  with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
    cli(DEMO, f"--workdir={tmp_path}")


def test_a_config_file_that_fails_is_one_line(tmp_path, cli):
  status, _, err = cli("--config=configs/dataset.py:nope", f"--workdir={tmp_path}")
  assert one_line_error(status, err) == (
      "flag --config=configs/dataset.py:nope: ValueError: unknown dataset config 'nope'; use "
      "--config=configs/dataset.py:<name> with <name> one of: " + ", ".join(DATASETS))
  status, _, err = cli("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert "No such file or directory: 'configs/nope.py'" in one_line_error(status, err)
