"""The analyze mode end to end on tiny models, checked against the forward pass and the
decoder run independently; on 8 simulated devices the studies of one device; its settings
checks. Chunked collection: tests/analysis/test_collect.py."""

import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from calm_jax import modes
from calm_jax.analysis import collect
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.model.hf_import import load_hf_t5
from calm_jax.model.source import load_model
from calm_jax.modes import analyze as analyze_mode
from calm_jax.modes.context import run_context
from calm_jax.model.t5 import exit_logits, forward, shift_right
from calm_jax.training.checkpoints import export_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDIES = ("stability", "confidence", "rank", "accuracy", "saturation", "oracle")
# A 3-decoder-layer transformers T5 over the byte vocabulary (its ids are the examples').
TINY_HF = dict(vocab_size=259, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=3,
               num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
               relative_attention_num_buckets=8, relative_attention_max_distance=16)


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory, analyze_config):
  """Every study on the config's model, teacher-forced and free-running."""
  config = analyze_config()
  workdir = tmp_path_factory.mktemp("analyzed")
  path = modes.run(config, str(workdir))
  return config, workdir, path, load_model(config.model, config.seed)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, save_random_hf_t5, analyze_config):
  """The layer-wise studies, teacher-forced, on the config's model, a transformers
  checkpoint and a params export of the config's model (as `train` writes)."""
  models = tmp_path_factory.mktemp("models")
  save_random_hf_t5(models / "plain", seed=1, scale=1.5, **TINY_HF)
  config = analyze_config(compare_hf_paths=(str(models / "plain"),),
                          compare_checkpoints=(str(models / "export"),), studies=STUDIES[:-1],
                          inputs=("teacher_forced",))
  own = load_model(config.model, config.seed)
  export_params(str(models / "export"), *own)
  workdir = tmp_path_factory.mktemp("compared")
  modes.run(config, str(workdir))
  return config, workdir, [own, load_hf_t5(str(models / "plain")), own]


def study_json(workdir, study):
  return json.load(open(os.path.join(workdir, f"analysis_{study}.json"), encoding="utf-8"))


def test_every_study_writes_its_json_and_plot(analyzed):
  _, workdir, path, _ = analyzed
  assert path == os.path.join(workdir, "analysis.json")
  expected = ["analysis.json", "run_record.json"] + [f"analysis_{s}.{e}" for s in STUDIES
                                                    for e in ("json", "png")]
  assert sorted(os.listdir(workdir)) == sorted(expected)
  index = json.load(open(path, encoding="utf-8"))
  assert index["models"] == [{"name": "config model", "num_layers": 3, "source":
                              "fresh random initialisation (seed 0, untrained)"}]
  assert list(index["studies"]) == list(STUDIES)
  for study in STUDIES:
    record = study_json(workdir, study)
    assert record["study"] == study and record["title"] and record["description"]
    expected_inputs = ["free_running"] if study == "oracle" else ["teacher_forced",
                                                                   "free_running"]
    assert list(record["inputs"]) == expected_inputs


def test_compared_models_appear_side_by_side_in_every_study(compared):
  _, workdir, _ = compared
  index = json.load(open(os.path.join(workdir, "analysis.json"), encoding="utf-8"))
  assert [m["name"] for m in index["models"]] == ["config model", "plain", "export"]
  assert sorted(os.listdir(workdir)) == sorted(
      ["analysis.json", "run_record.json"]
      + [f"analysis_{s}.{e}" for s in STUDIES[:-1] for e in ("json", "png")])
  for study in STUDIES[:-1]:
    models = study_json(workdir, study)["models"]
    assert [m["name"] for m in models] == ["config model", "plain", "export"]
    assert all(list(m["results"]) == ["teacher_forced"] for m in models)
    # The export holds the config model's parameters: the same numbers.
    assert models[2]["results"] == models[0]["results"]
    assert models[1]["results"] != models[0]["results"]


def test_teacher_forced_accuracy_of_every_layer_matches_the_forward_pass(compared):
  config, workdir, models = compared
  inputs = analyze_mode.analysis_inputs(run_context(config, ""), 6)
  record = study_json(workdir, "accuracy")
  for (model_config, params), model in zip(models, record["models"]):
    out = jax.jit(forward, static_argnums=0)(model_config, params, inputs.input_ids,
                                             shift_right(model_config, inputs.target_ids),
                                             inputs.input_mask)
    mask = inputs.target_mask
    layer_logits = jax.jit(jax.vmap(exit_logits, in_axes=(None, None, 0)), static_argnums=0)(
        model_config, params, out.hidden_states)  # [L, B, T, V]
    expected = [float(np.mean(np.asarray(logits).argmax(-1)[mask] == inputs.target_ids[mask]))
                for logits in layer_logits]
    np.testing.assert_allclose(expected[-1], np.mean(
        np.asarray(out.logits).argmax(-1)[mask] == inputs.target_ids[mask]))
    result = model["results"]["teacher_forced"]
    assert result["accuracy"] == expected
    assert result["num_tokens"] == int(mask.sum())
    assert result["measure_confidence"] is None


def test_free_running_statistics_read_the_full_models_own_outputs(analyzed):
  config, workdir, _, (model_config, params) = analyzed
  inputs = analyze_mode.analysis_inputs(run_context(config, ""), 6)
  exit_config = dataclasses.replace(ExitConfig.from_section(config.exit), threshold=1.0)
  full = generate(model_config, params, inputs.input_ids, inputs.input_mask,
                  max_decode_len=5, exit=exit_config, return_trace=True)
  generated = np.asarray(full.exit_layers) > 0  # [B, T]
  results = study_json(workdir, "accuracy")["models"][0]["results"]["free_running"]
  assert results["num_tokens"] == int(generated.sum())
  # The targets are the full model's own outputs: its last layer is always right.
  assert results["accuracy"][-1] == 1.0
  # The decoder's softmax_diff trace, averaged per layer over the generated tokens.
  assert results["measure"] == "softmax_diff"
  np.testing.assert_allclose(results["measure_confidence"],
                             np.asarray(full.trace)[generated].mean(axis=0), rtol=1e-6)
  stability = study_json(workdir, "stability")["models"][0]["results"]
  for setting in ("teacher_forced", "free_running"):
    assert stability[setting]["stable_fraction"][-1] == 1.0


def test_oracle_rows_match_the_decoder(analyzed):
  config, workdir, _, (model_config, params) = analyzed
  inputs = analyze_mode.analysis_inputs(run_context(config, ""), 6)
  rows = {row["name"]: row for row in study_json(workdir, "oracle")["models"][0]["result"]["rows"]}
  assert list(rows) == ["full", "oracle_copy_state", "oracle_full_compute"]
  assert rows["full"]["mean_exit_layer"] == 3.0
  copied = generate(model_config, params, inputs.input_ids, inputs.input_mask,
                    max_decode_len=5, exit=ExitConfig(measure="oracle"))
  layers = np.asarray(copied.exit_layers)
  assert rows["oracle_copy_state"]["mean_exit_layer"] == pytest.approx(
      layers[layers > 0].mean(), abs=1e-12)
  # With the true cache the oracle's tokens are the full model's.
  assert rows["oracle_full_compute"]["token_agreement"] == 1.0
  assert rows["oracle_full_compute"]["same_as_full_fraction"] == 1.0
  # ...and its exit layers are the first layers agreeing with the final one along the full
  # model's own outputs, which the free-running stability study finds in the forward pass.
  stability = study_json(workdir, "stability")["models"][0]["results"]["free_running"]
  assert rows["oracle_full_compute"]["mean_exit_layer"] == pytest.approx(
      stability["mean_first_agreement_layer"], abs=1e-12)


def assert_same_numbers(ours, expected, where="") -> None:
  """Equal JSON values; floats to float32 rounding (the mesh's shards decode other batch
  shapes), NaN equal to NaN."""
  if isinstance(expected, dict):
    assert list(ours) == list(expected), where
    for key in expected:
      assert_same_numbers(ours[key], expected[key], f"{where}.{key}")
  elif isinstance(expected, list):
    assert len(ours) == len(expected), where
    for i, (a, b) in enumerate(zip(ours, expected)):
      assert_same_numbers(a, b, f"{where}[{i}]")
  elif isinstance(expected, float) and math.isnan(expected):
    assert isinstance(ours, float) and math.isnan(ours), where
  elif isinstance(expected, float):
    assert ours == pytest.approx(expected, rel=1e-5, abs=1e-6), where
  else:
    assert ours == expected, where


def test_eight_devices_give_the_studies_of_one_device(analyzed, tmp_path, jax_processes):
  """The free-running and oracle decodes on data=4 x model=2 (6 examples over 4 shards):
  every study's numbers equal the 1-device run's."""
  config, workdir, _, _ = analyzed
  config = pickle.loads(pickle.dumps(config))
  with config.unlocked():
    config.mesh.model = 2
  with open(tmp_path / "config.pkl", "wb") as f:
    pickle.dump(config, f)
  script = ("import pickle, sys\nfrom calm_jax import modes\n"
            "modes.run(pickle.load(open(sys.argv[1], 'rb')), sys.argv[2])")
  done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "config.pkl"),
                         str(tmp_path / "mesh")], cwd=jax_processes.root,
                        env=jax_processes.environment(8), capture_output=True, text=True,
                        timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "[analyze] mesh data=4 model=2 over 1 process(es)" in done.stdout.splitlines()
  for name in ["analysis"] + [f"analysis_{study}" for study in STUDIES]:
    ours = json.load(open(tmp_path / "mesh" / f"{name}.json", encoding="utf-8"))
    expected = json.load(open(workdir / f"{name}.json", encoding="utf-8"))
    assert_same_numbers(ours, expected, name)


def test_saturation_groups_are_disjoint_and_sized_as_configured(analyzed):
  workdir = analyzed[1]
  for model in study_json(workdir, "saturation")["models"]:
    for result in model["results"].values():
      easy, difficult = result["easy"]["sequences"], result["difficult"]["sequences"]
      assert len(easy) == 2 and len(difficult) == 2 and not set(easy) & set(difficult)
      assert min(result["easy"]["mean_similarity"]) >= max(
          result["difficult"]["mean_similarity"])


@pytest.mark.parametrize("field, value, message", [
    ("studies", ("stabilty",), r"analysis.studies has 'stabilty'; allowed: stability, "),
    ("studies", (), r"analysis.studies is empty"),
    ("inputs", ("teacher",), r"analysis.inputs has 'teacher'; allowed: teacher_forced, "
                             r"free_running"),
    ("inputs", ("free_running", "free_running"), r"analysis.inputs repeats a name"),
    ("num_examples", 0, r"analysis.num_examples must be an integer >= 1, got 0"),
    ("batch_size", -1, r"analysis.batch_size must be an integer >= 0, got -1"),
    ("compare_hf_paths", ("/no/such/model",), r"'/no/such/model', which is not a local "
                                              r"Hugging Face T5 directory"),
    ("compare_checkpoints", (ROOT,), r"analysis.compare_checkpoints has '.*', which is not a "
                                     r"calm_jax params export"),
    ("after_layers", (2, 1), r"analysis.after_layers must be strictly increasing"),
    ("rank_cutoffs", (0, 5), r"analysis.rank_cutoffs has 0; allowed: integers >= 1"),
    ("saturation_threshold", 1.5, r"analysis.saturation_threshold must lie in \(0, 1\]"),
    ("num_difficult", 5, r"num_easy \+ num_difficult = 7 exceeds the 6 sequences"),
    ("calibration_bins", 0, r"analysis.calibration_bins must be an integer >= 1, got 0"),
    ("similarity", "bleurt", r"analysis.similarity='bleurt'; allowed: rouge_l"),
])
def test_bad_settings_fail_before_the_model_loads(tmp_path, no_model_loading, field, value,
                                                  message, analyze_config):
  with pytest.raises(ValueError, match=message):
    modes.run(analyze_config(**{field: value}), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_a_string_where_a_tuple_belongs_is_rejected(analyze_config):
  section = analyze_config().analysis.to_dict()
  section["studies"] = "stability"  # would otherwise read as the studies 's', 't', ...
  with pytest.raises(ValueError, match="analysis.studies must be a tuple, got 'stability'"):
    analyze_mode.analysis_settings(ml_collections.ConfigDict(section))


def _no_collection(*args, **kwargs):
  raise AssertionError("the model ran before its settings were checked")


@pytest.mark.parametrize("overrides, message", [
    (dict(after_layers=(0, 2)), r"after-layer 2 is not allowed for a 3-layer decoder"),
    (dict(compare_hf_paths="small_vocab"), r"has vocab_size 67; the analysis examples use "
                                           r"vocabulary 'byte' with 259 ids"),
])
def test_settings_that_depend_on_the_model_fail_before_it_runs(tmp_path, monkeypatch,
                                                               overrides, message,
                                                               save_random_hf_t5, analyze_config):
  for name in ("teacher_forced", "free_running", "full_decode", "oracle_decodes"):
    monkeypatch.setattr(collect, name, _no_collection)
  if overrides.get("compare_hf_paths") == "small_vocab":
    save_random_hf_t5(tmp_path / "small", **{**TINY_HF, "vocab_size": 67})
    overrides = dict(compare_hf_paths=(str(tmp_path / "small"),))
  workdir = tmp_path / "out"
  with pytest.raises(ValueError, match=message):
    modes.run(analyze_config(**overrides), str(workdir))
  assert not workdir.exists()  # a refused run leaves nothing behind


@pytest.mark.parametrize("measure, traced", [("softmax_diff", True), ("state_saturation", True),
                                             ("oracle", False), ("static", False),
                                             ("lstm", False)])
def test_only_thresholded_untrained_measures_are_traced_free_running(measure, traced):
  exit_config = ExitConfig(measure=measure, static_exit_layer=1)
  assert (analyze_mode._trace_exit(exit_config) is exit_config) == traced
