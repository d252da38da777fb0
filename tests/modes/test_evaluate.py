"""The evaluate mode: calibrated thresholds, scores recomputed independently, the report's
files, and settings checked before any work; on 8 simulated devices the report of one
device; a killed run restarted to the files of an uninterrupted one."""

import inspect
import json
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest

from calm_jax import modes
from calm_jax.calibration import consistency, ltt
from calm_jax.data.tasks import get_task
from calm_jax.data.vocabulary import BYTE
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.decoding.greedy import greedy_decode
from calm_jax.decoding.threshold_grid import decode_threshold_grid
from calm_jax.model.source import load_model
from calm_jax.modes.context import encode_split
from calm_jax.modes.resume import resume_key
from calm_jax.utils import timing


def test_evaluate_mode_reports_what_an_independent_recomputation_gives(tmp_path,
                                                                       evaluate_config):
  config = evaluate_config()
  path = modes.run(config, str(tmp_path))
  report = json.load(open(path, encoding="utf-8"))
  for name in ("report.md", "report_quality_speedup.png", "report_exit_layers.png",
               "report_delta_loss.png"):
    assert os.path.getsize(tmp_path / name) > 0
  assert [r["measure"] for r in report["rows"]] == [
      "greedy (full model)", "softmax_diff lambda=1", "softmax_diff", "softmax_diff",
      "static layer 3 (never exits)", "static layer 1", "oracle"]
  assert [r["reference"] for r in report["rows"]] == (
      ["softmax_diff lambda=1"] * 4 + ["static layer 3 (never exits)"] * 3)
  for row in report["rows"]:
    for clock in ("wall_clock", "latency"):
      low, high = row[f"{clock}_spread"]
      assert low <= row[f"{clock}_speedup"] <= high
      assert row[f"{clock}_realized"] == pytest.approx(
          row[f"{clock}_speedup"] / row[f"{clock}_ideal_speedup"])
    if row["kind"] == "reference":  # timed against itself: exactly 1 in every round
      assert row["wall_clock_spread"] == [1.0, 1.0] and row["wall_clock_ideal_speedup"] == 1.0
  by_name = {row["measure"]: row for row in report["rows"]}
  for row in report["rows"]:  # the loop's ideal applied to all but the timed fixed part
    for clock, fixed_clock in (("wall_clock", "throughput"), ("latency", "latency")):
      share = min(report["fixed_part_seconds"][fixed_clock]
                  / by_name[row["reference"]][f"{clock}_seconds"], 0.99)  # noise: below 1
      assert 0 < share and row[f"{clock}_fixed_share"] == pytest.approx(share)
      loop = row[f"{clock}_loop_ideal_speedup"]
      assert row[f"{clock}_ideal_speedup"] == pytest.approx(1 / (share + (1 - share) / loop))
  assert report["timing_rounds"] == 5 and report["latency_examples"] == 2
  static_1, oracle = report["rows"][5], report["rows"][6]
  assert static_1["wall_clock_loop_ideal_speedup"] > 1.5  # 1 of 3 layers, + propagated K/V
  assert 1 < static_1["wall_clock_ideal_speedup"] < static_1["wall_clock_loop_ideal_speedup"]
  assert oracle["wall_clock_loop_ideal_speedup"] < 1.0  # a full pass first, then the exit
  model_config, params = load_model(config.model, config.seed)
  calib = encode_split(config, "validation", 8, BYTE)
  test = encode_split(config, "test", 6, BYTE)
  grid = decode_threshold_grid(model_config, params, calib.input_ids, calib.attention_mask,
                               thresholds=(1.0, 0.5, 0.2), exit=ExitConfig(), max_decode_len=6)
  losses = consistency.consistency_losses("textual", *grid.generated_ids(),
                                          similarity="token_agreement")
  full = np.asarray(greedy_decode(model_config, params, test.input_ids, test.attention_mask,
                                  max_decode_len=6))
  task = get_task("generated")
  for row in report["rows"][2:4]:
    chosen = ltt.calibrate(losses, (1.0, 0.5, 0.2), row["delta"], 0.1,
                                   "ltt_hoeffding_bentkus")
    assert row["threshold"] == chosen.threshold
    out = generate(model_config, params, test.input_ids, test.attention_mask,
                   exit=ExitConfig(threshold=chosen.threshold), max_decode_len=6)
    layers = np.asarray(out.exit_layers)
    assert row["mean_exit_layer"] == pytest.approx(layers[layers > 0].mean())
    ids = [t[l > 0].tolist() for t, l in zip(np.asarray(out.tokens), layers)]
    full_ids = [r[:r.index(1) + 1] if 1 in r else r for r in full.tolist()]
    loss = consistency.consistency_losses("textual", [ids], full_ids,
                                          similarity="token_agreement").mean()
    assert row["test_loss"] == pytest.approx(loss)
    assert row["violation"] == (loss > row["delta"])
    assert row["quality"] == task.evaluate([BYTE.decode(i) for i in ids], test.examples)
  assert report["rows"][0]["quality"] == task.evaluate([BYTE.decode(r) for r in full],
                                                       test.examples)
  assert report["rows"][1]["quality"] == report["rows"][0]["quality"]  # lambda = 1 is greedy
  assert report["rows"][1]["test_loss"] == 0.0
  assert static_1["mean_exit_layer"] == 1.0


@pytest.mark.parametrize("field, value, message", [
    ("measures", ("softmax_dif",), "unknown confidence measure 'softmax_dif'"),
    ("measures", ("static",), "evaluate.measures has 'static', which is not calibrated"),
    ("measures", ("meta_mlp",), "the learned measure 'meta_mlp', but .* does not exist; run "
                                "the train_exit mode"),
    ("rule", "ltt", "evaluate.rule='ltt'; allowed: "),
    ("num_examples", 0, "evaluate.num_examples must be >= 1, got 0"),
    ("timing_rounds", 3, "evaluate.timing_rounds must be >= 5, got 3"),
    ("latency_examples", 0, "evaluate.latency_examples must be >= 1, got 0"),
])
def test_evaluate_settings_are_checked_before_the_model_loads(tmp_path, no_model_loading,
                                                              evaluate_config, field, value,
                                                              message):
  with pytest.raises(ValueError, match=message):
    modes.run(evaluate_config(**{field: value}), str(tmp_path))
  assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------- mesh and resume

class TickClock:
  """A deterministic clock (replaces utils.timing.CLOCKS['wall'], which the evaluate mode's
  timing reads at each call): read k, counted from `start`, returns k + k * k / 1024
  seconds, so every timed call's duration is distinct and set by the reads before it."""

  def __init__(self, start=0):
    self.reads = start

  def __call__(self):
    k = self.reads
    self.reads += 1
    return k + k * k / 1024


# Runs evaluate on a pickled config with the tick clock; with a key, kills itself (SIGKILL,
# no clean-up) right after the resume store saved that key, printing the clock's reads.
RUN = inspect.getsource(TickClock) + r'''
import os, pickle, signal, sys
from calm_jax import modes
from calm_jax.modes import resume
from calm_jax.utils import timing
config_path, workdir, kill_after = sys.argv[1:4]
clock = timing.CLOCKS["wall"] = TickClock()
original = resume.ResumeStore.save
def save_then_die(self, key, arrays):
  original(self, key, arrays)
  if key == kill_after:
    print(f"READS {clock.reads}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
resume.ResumeStore.save = save_then_die
with open(config_path, "rb") as f:
  config = pickle.load(f)
modes.run(config, workdir)
'''
REPORT_FILES = ("report.json", "report.md", "report_quality_speedup.png",
                "report_exit_layers.png", "report_delta_loss.png")


def _small_evaluate_config(model_split=1):
  """A small evaluate run: 2 + 2 layers at d_model 32, 4 calibration examples in parts of 2
  under 4 thresholds (the naive rule picks real early exits), 4 test examples, 5 timing
  rounds, a latency sample of 1; `model_split` is mesh.model."""
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  config.mode = "evaluate"
  config.data.max_input_len = 24
  config.decode.max_decode_len = 5
  config.model.update(num_decoder_layers=2, d_model=32, d_ff=64)
  config.calibration.update(num_examples=4, thresholds=(1.0, 0.95, 0.9, 0.8),
                            deltas=(0.25, 0.75), num_splits=2, similarity="token_agreement",
                            save_every=2)
  config.evaluate.update(measures=("softmax_diff",), num_examples=4, static_layers=(),
                         oracle=False, timing_rounds=5, latency_examples=1, rule="naive")
  config.mesh.model = model_split
  config.lock()
  return config


def _run_with_clock(config, workdir, clock):
  original = timing.CLOCKS["wall"]
  timing.CLOCKS["wall"] = clock
  try:
    modes.run(config, str(workdir))
  finally:
    timing.CLOCKS["wall"] = original


def _contents(workdir, names):
  return {name: (workdir / name).read_bytes() for name in names}


def _run_script(jax_processes, tmp_path, config, workdir, kill_after="", devices=1):
  with open(tmp_path / "config.pkl", "wb") as f:
    pickle.dump(config, f)
  return subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "config.pkl"), str(workdir),
                         kill_after], cwd=jax_processes.root,
                        env=jax_processes.environment(devices), capture_output=True, text=True,
                        timeout=900, check=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The small evaluate run on one device, uninterrupted, on the tick clock: its workdir."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _run_with_clock(_small_evaluate_config(), workdir, TickClock())
  return workdir


def test_evaluate_on_eight_devices_writes_the_one_device_report(tmp_path, jax_processes,
                                                                 uninterrupted):
  """Every decode (grid, test split, timed calls) on data=4 x model=2: the same thresholds,
  exit layers, scores and (same clock) timings, to the byte."""
  rows = json.loads((uninterrupted / "report.json").read_text())["rows"]
  assert min(row["mean_exit_layer"] for row in rows) < 2  # real early exits
  done = _run_script(jax_processes, tmp_path, _small_evaluate_config(model_split=2),
                     tmp_path / "mesh", devices=8)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "[evaluate] mesh data=4 model=2 over 1 process(es)" in done.stdout.splitlines()
  assert _contents(tmp_path / "mesh", REPORT_FILES) == _contents(uninterrupted, REPORT_FILES)


DECODES = [resume_key("test", name) for name in (
    "greedy", "softmax_diff lambda=1", "softmax_diff delta=0.25", "softmax_diff delta=0.75")]
GRID = ["grid_softmax_diff_0", "grid_softmax_diff_2"]
TIMING = [f"timing_{clock}_{index}" for clock in ("throughput", "latency") for index in range(5)]


@pytest.mark.parametrize("kill_after, saved_before", [
    # Among the test decodes: the greedy reference and lambda = 1 saved, the grid not.
    (DECODES[1], DECODES[:2]),
    # Mid-timing: every decode and two throughput rounds saved.
    (TIMING[1], DECODES[:2] + GRID + DECODES[2:] + TIMING[:2]),
])
def test_killed_evaluate_resumes_to_the_files_of_an_uninterrupted_run(
    tmp_path, jax_processes, uninterrupted, kill_after, saved_before, saved_resume_keys):
  killed = tmp_path / "killed"
  done = _run_script(jax_processes, tmp_path, _small_evaluate_config(), killed, kill_after)
  assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
  reads = int(done.stdout.split("READS ")[1].split()[0])
  store = killed / "resume" / "evaluate"
  assert "report.json" not in os.listdir(killed)
  assert sorted(os.listdir(store)) == sorted(["description.json"]
                                              + [f"{key}.npz" for key in saved_before])
  # The restart decodes and times only what was not saved. Its clock goes on from the
  # killed run's reads: a round timed again would read other ticks than the uninterrupted
  # run did, so equal files also show that saved rounds were read back, not re-timed.
  saved_resume_keys.clear()
  _run_with_clock(_small_evaluate_config(), killed, TickClock(start=reads))
  everything = DECODES[:2] + GRID + DECODES[2:] + TIMING
  assert saved_resume_keys == [key for key in everything if key not in saved_before]
  assert "resume" not in os.listdir(killed)
  assert sorted(os.listdir(killed)) == sorted(os.listdir(uninterrupted))
  names = REPORT_FILES + ("run_record.json",)
  assert _contents(killed, names) == _contents(uninterrupted, names)


def test_free_rows_calibrate_synchronized_decoding_and_verify_it_losslessly(tmp_path,
                                                                           evaluate_config):
  """evaluate.free: FREE's lambda from LTT on its own grid (recomputed here pair by pair),
  the calibrated rows' scores, and the verified row equal to greedy decoding."""
  config = evaluate_config(measures=(), static_layers=(), oracle=False, free=True)
  report = json.load(open(modes.run(config, str(tmp_path)), encoding="utf-8"))
  free = "FREE (softmax_diff, s=1)"
  assert [r["measure"] for r in report["rows"]] == [
      "greedy (full model)", "FREE lambda=1", free, free, "FREE verified"]
  assert {r["reference"] for r in report["rows"]} == {"FREE lambda=1"}
  assert "| FREE verified |" in open(tmp_path / "report.md", encoding="utf-8").read()
  model_config, params = load_model(config.model, config.seed)
  calib = encode_split(config, "validation", 8, BYTE)
  test = encode_split(config, "test", 6, BYTE)
  sync = ExitConfig(decoding="synchronized", shallow_exit_layer=1, max_pending=4)
  decode = lambda split, threshold, **change: generate(
      model_config, params, split.input_ids, split.attention_mask, max_decode_len=6,
      exit=ExitConfig(**{**sync.__dict__, "threshold": threshold, **change}))
  cut = lambda out: [t[l > 0].tolist() for t, l in zip(np.asarray(out.tokens),
                                                        np.asarray(out.exit_layers))]
  full_calib = cut(decode(calib, 1.0))
  losses = consistency.consistency_losses(
      "textual", [cut(decode(calib, t)) for t in (1.0, 0.5, 0.2)], full_calib,
      similarity="token_agreement")  # [8, 3]
  full_test = cut(decode(test, 1.0))
  for row in report["rows"][2:4]:
    chosen = ltt.calibrate(losses, (1.0, 0.5, 0.2), row["delta"], 0.1, "ltt_hoeffding_bentkus")
    assert row["threshold"] == chosen.threshold
    out = decode(test, chosen.threshold)
    loss = consistency.consistency_losses("textual", [cut(out)], full_test,
                                          similarity="token_agreement").mean()
    assert row["test_loss"] == pytest.approx(loss)
    tokens = (np.asarray(out.exit_layers) > 0).sum()
    assert row["deep_passes_per_token"] == pytest.approx(np.asarray(out.deep_passes).sum()
                                                         / tokens)
  verified = report["rows"][4]
  assert verified["threshold"] == report["rows"][3]["threshold"]  # the largest delta's
  assert verified["test_loss"] == 0.0
  assert verified["quality"] == report["rows"][0]["quality"]
  assert cut(decode(test, verified["threshold"], verify=True)) == full_test
