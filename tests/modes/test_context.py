"""The run context (calm_jax.modes.context): the modes reading seqio tasks (`data.task =
calm_*`) give the same examples as the plain registry for the generated family, JSON Lines
references, metric names, error messages, and one decode run end to end. Without seqio only
the missing-seqio error is tested (the others skip: pip install -r requirements-seqio.txt)."""

import json
import os
import subprocess
import sys

import pytest

import calm_jax.data
from calm_jax import modes
from calm_jax.data import metrics, tasks
from calm_jax.modes import context

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEQIO_MODULE = "calm_jax.data.seqio_tasks"
JSONL_TASK = "scratch_run_jsonl"


@pytest.fixture
def seqio_tasks():
  pytest.importorskip("seqio")
  from calm_jax.data import seqio_tasks as module  # pylint: disable=import-outside-toplevel
  return module


@pytest.fixture
def without_seqio(monkeypatch):
  """seqio as if not installed: `import seqio` raises ImportError."""
  monkeypatch.setitem(sys.modules, "seqio", None)
  monkeypatch.delitem(sys.modules, SEQIO_MODULE, raising=False)
  monkeypatch.delattr(calm_jax.data, "seqio_tasks", raising=False)


def _triples(examples):
  return [(e.inputs, e.targets, tuple(e.references)) for e in examples]


# --- without seqio -------------------------------------------------------------------------


def test_missing_seqio_is_named_before_any_model_work(without_seqio, no_model_loading,
                                                      task_config, tmp_path):
  del without_seqio
  expected = ("data.task='calm_generated' is a seqio task, but seqio / TensorFlow cannot be "
              "imported")
  with pytest.raises(ImportError) as error:
    context.run_task("calm_generated")
  assert str(error.value).startswith(expected)
  assert str(error.value).endswith("install them with `pip install -r requirements-seqio.txt`")

  with pytest.raises(ImportError, match="pip install -r requirements-seqio.txt"):
    modes.run(task_config("calm_generated"), str(tmp_path))
  with pytest.raises(ImportError, match="data.task='calm_xsum' is a seqio task"):
    context.check_data(task_config("calm_xsum"))


def test_plain_tasks_need_no_seqio(without_seqio):
  del without_seqio
  task = context.run_task("generated")
  assert task.metric_names == ("accuracy",)
  assert _triples(task.examples("test", 3, 0)) == _triples(
      tasks.get_task("generated").examples("test", 3, 0))
  assert SEQIO_MODULE not in sys.modules
  with pytest.raises(ValueError, match="task 'nope' is not registered; known tasks: "):
    context.run_task("nope")
  with pytest.raises(ValueError, match="task 'generated': count must be an int >= 1; got 0"):
    task.examples("test", 0, 0)


# --- with seqio ---------------------------------------------------------------------------


def test_prefix_is_seqio_tasks_prefix(seqio_tasks):
  assert context.SEQIO_TASK_PREFIX == seqio_tasks.TASK_PREFIX


@pytest.mark.parametrize("split,seed", [("validation", 0), ("test", 0), ("test", 5),
                                        ("train", 0), ("train", 7)])
def test_calm_generated_reads_the_plain_examples(seqio_tasks, split, seed):
  del seqio_tasks
  seqio_examples = context.read_examples("calm_generated", split, 6, seed)
  plain = tasks.get_task("generated").examples(split, 6, seed)
  assert len(seqio_examples) == 6
  assert _triples(seqio_examples) == _triples(plain)
  # Deterministic, and a shorter read is a prefix of a longer one.
  assert _triples(context.read_examples("calm_generated", split, 3, seed)) == _triples(plain[:3])


def test_one_generated_kind(seqio_tasks):
  del seqio_tasks
  examples = context.read_examples("calm_generated_add", "validation", 4, 0)
  assert _triples(examples) == _triples(
      tasks.get_task("generated_add").examples("validation", 4, 0))
  assert all(e.inputs.startswith("add: ") for e in examples)


def test_metric_names_match_the_registrations(seqio_tasks):
  for spec in seqio_tasks.TFDS_SPECS:
    assert context.run_task(f"calm_{spec.name}").metric_names == tuple(spec.metric_names)
  for name in tasks.GENERATED_TASKS + tasks.LOCAL_TASKS:
    assert (context.run_task(f"calm_{name}").metric_names
            == tasks.get_task(name).metric_names)
  assert context.run_task("calm_iwslt2017_en_de").metric_names == ("bleu",)


def test_seqio_task_scores_like_the_plain_task(seqio_tasks):
  del seqio_tasks
  task = context.run_task("calm_generated")
  examples = task.examples("validation", 4, 0)
  predictions = [e.targets for e in examples[:3]] + ["wrong"]
  assert task.evaluate(predictions, examples) == tasks.get_task("generated").evaluate(
      predictions, tasks.get_task("generated").examples("validation", 4, 0))
  assert task.evaluate(predictions, examples) == {"accuracy": 75.0}


@pytest.fixture
def jsonl_task(seqio_tasks, tmp_path):
  """calm_scratch_run_jsonl: two splits of JSON Lines with an `answers` references field,
  registered with seqio only (the plain registry is left as it was)."""
  rows = {"train": [("one", "1", ["1", "uno"])],
          "validation": [("two", "2", ["2", "dos", "deux"]), ("three", "3", ["3"]),
                         ("four", "4", ["4", "vier"])]}
  for split, lines in rows.items():
    with open(tmp_path / f"{split}.jsonl", "w", encoding="utf-8") as handle:
      for inputs, targets, answers in lines:
        handle.write(json.dumps({"inputs": inputs, "targets": targets, "answers": answers})
                     + "\n")
  task = tasks.Task(JSONL_TASK, tasks.JsonlSource(str(tmp_path), references_field="answers"),
                    "number: ", ("squad",))
  name = seqio_tasks.register_plain_task(task, seqio_tasks.byte_vocabulary()).name
  yield name
  seqio_tasks.seqio.TaskRegistry.remove(name)


def test_jsonl_seqio_task_keeps_prefix_and_references(jsonl_task):
  assert jsonl_task == f"calm_{JSONL_TASK}"
  examples = context.read_examples(jsonl_task, "validation", 2, 0)
  assert _triples(examples) == [("number: two", "2", ("2", "dos", "deux")),
                                ("number: three", "3", ("3",))]
  # More than the file holds: every line, in file order.
  assert [e.inputs for e in context.read_examples(jsonl_task, "validation", 10, 3)] == [
      "number: two", "number: three", "number: four"]
  assert _triples(context.read_examples(jsonl_task, "train", 1, 0)) == [
      ("number: one", "1", ("1", "uno"))]
  task = context.run_task(jsonl_task)
  assert task.metric_names == ("squad",)
  scores = task.evaluate(["dos", "3", "five"], context.read_examples(jsonl_task,
                                                                      "validation", 3, 0))
  assert scores == metrics.evaluate(("squad",), ["dos", "3", "five"],
                                    [("2", "dos", "deux"), ("3",), ("4", "vier")])


def test_unknown_seqio_task_and_split_are_named(seqio_tasks, task_config):
  with pytest.raises(ValueError) as error:
    context.check_data(task_config("calm_nope"))
  message = str(error.value)
  assert message.startswith("seqio task 'calm_nope' is not registered; registered: ")
  listed = message.split("registered: ")[-1].split(", ")
  assert set(seqio_tasks.TASK_NAMES) <= set(listed) and listed == sorted(listed)
  assert {"calm_generated", "calm_xsum", "calm_iwslt2017_en_de"} <= set(listed)
  with pytest.raises(ValueError, match=r"^seqio task 'calm_generated' has no split 'dev'; "
                                       r"its splits: train, validation, test$"):
    context.read_examples("calm_generated", "dev", 2, 0)
  with pytest.raises(ValueError, match=r"^seqio task 'calm_squad_v1.1' has no split 'test'; "
                                       r"its splits: train, validation$"):
    context.read_examples("calm_squad_v1.1", "test", 2, 0)


def test_tfds_tasks_read_as_text(seqio_tasks):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=3):
    translation = context.read_examples("calm_wmt14_en_de", "validation", 2, 0)
    squad = context.read_examples("calm_squad_v1.1", "validation", 2, 0)
  assert len(translation) == 2 and len(squad) == 2
  assert all(e.inputs.startswith("translate English to German: ") for e in translation)
  assert all(e.references == (e.targets,) for e in translation)
  assert all(e.inputs.startswith("question: ") and " context: " in e.inputs for e in squad)
  assert all(e.references and e.references[0] == e.targets for e in squad)
  del seqio_tasks


def test_check_data_accepts_a_seqio_task(seqio_tasks, task_config):
  del seqio_tasks
  vocabulary = context.check_data(task_config("calm_generated"))
  assert vocabulary.name == "byte"


def test_main_decodes_a_seqio_task(seqio_tasks, tmp_path):
  del seqio_tasks
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "calm_jax.main", "--config=configs/demo.py",
             f"--workdir={tmp_path}", "--config.mode=decode",
             "--config.data.task=calm_generated", "--config.data.num_examples=2",
             "--config.decode.max_decode_len=3", "--config.model.num_decoder_layers=2"]
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  records = [json.loads(line) for line in open(tmp_path / "decode.jsonl", encoding="utf-8")]
  expected = tasks.get_task("generated").examples("test", 2, 0)
  assert [(r["inputs"], r["targets"]) for r in records] == [(e.inputs, e.targets)
                                                            for e in expected]
  assert all(1 <= layer <= 2 for r in records for layer in r["exit_layers"])


def test_the_splits_a_run_reads_are_checked_first_naming_their_keys(tmp_path, task_config,
                                                                     no_model_loading):
  rows = [json.dumps({"inputs": "a", "targets": "b"}), "not json"]
  (tmp_path / "validation.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
  tasks.register_jsonl_task("reliability_scratch", str(tmp_path), replace=True)
  try:
    config = task_config("reliability_scratch")
    with pytest.raises(ValueError, match="^data.calibration_split='validation' of data.task="
                       f"'reliability_scratch': {tmp_path}/validation.jsonl:2: not valid JSON"):
      context.run_context(config, "", splits=("data.calibration_split",))
    with pytest.raises(ValueError, match="^data.test_split='test' of data.task="
                       r"'reliability_scratch': split='test' does not exist in .*; splits "
                       "there: validation$"):
      context.run_context(config, "", splits=("data.test_split",))
    with config.unlocked():
      config.data.skip_malformed = True
    checked = context.run_context(config, "", splits=("data.calibration_split",))
    assert [e.inputs for e in checked.split("validation", 5).examples] == ["a"]
  finally:
    tasks._REGISTRY.pop("reliability_scratch", None)  # pylint: disable=protected-access
