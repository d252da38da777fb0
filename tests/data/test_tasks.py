"""The task registry without seqio: generated and JSON Lines tasks, prefixes, metrics,
registration rules, unknown names; the ../shared/data tasks when that folder is present."""

import json
import os

import pytest

from calm_jax.data import generated, metrics, tasks
from calm_jax.data.tasks import GeneratedSource, JsonlSource, Task, get_task

SHARED_DATA = tasks.default_data_dir()


@pytest.fixture
def jsonl_dir(tmp_path):
  rows = {"train": [("one", "1"), ("two", "2"), ("three", "3")],
          "validation": [("four", "4"), ("five", "5")]}
  for split, pairs in rows.items():
    with open(tmp_path / f"{split}.jsonl", "w", encoding="utf-8") as handle:
      for inputs, targets in pairs:
        handle.write(json.dumps({"inputs": inputs, "targets": targets,
                                 "answers": [targets, f"#{targets}"]}) + "\n")
  return str(tmp_path)


@pytest.fixture
def scratch_names():
  """Removes the tasks a test registers."""
  names = []
  yield names
  for name in names:
    tasks._REGISTRY.pop(name, None)  # pylint: disable=protected-access


# --- the registry -------------------------------------------------------------------------


def test_builtin_names():
  names = tasks.task_names()
  assert names == tuple(sorted(names))
  assert set(tasks.GENERATED_TASKS) == {"generated"} | {f"generated_{k}"
                                                          for k in generated.KINDS}
  assert set(tasks.GENERATED_TASKS + tasks.LOCAL_TASKS) <= set(names)
  assert set(tasks.LOCAL_TASKS) == {"cnn_dailymail_local", "samsum_local", "squad_v1.1_local",
                                    "wmt14_en_de_local", "wmt14_en_fr_local",
                                    "wmt15_en_fr_local"}


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError) as info:
    get_task("cnn_dm")
  message = str(info.value)
  assert message.startswith("task 'cnn_dm' is not registered; known tasks: ")
  for name in tasks.task_names():
    assert name in message
  assert "data.task=calm_<name>" in message  # where the TFDS datasets are
  with pytest.raises(ValueError, match="task None is not registered"):
    get_task(None)


def test_every_task_has_known_metrics():
  for name in tasks.task_names():
    assert set(get_task(name).metric_names) <= set(metrics.CORPUS_METRICS)


# --- generated tasks ----------------------------------------------------------------------


def test_generated_task_matches_the_generator():
  task = get_task("generated")
  assert task.splits() == ("train", "validation", "test")
  assert task.examples("validation", 20, seed=4) == generated.examples("validation", 20, 4)
  assert task.metric_names == ("accuracy",)


@pytest.mark.parametrize("kind", generated.KINDS)
def test_per_kind_tasks(kind):
  found = get_task(f"generated_{kind}").examples("test", 30, seed=1)
  assert found == generated.examples("test", 30, 1, kinds=(kind,))
  assert {e.kind for e in found} == {kind}


def test_generated_needs_a_count():
  with pytest.raises(ValueError, match="count=None: a generated split is endless"):
    get_task("generated").examples("train")


@pytest.mark.parametrize("count", [0, -2, 1.5, True])
def test_bad_count(count):
  with pytest.raises(ValueError, match="count must be None or an int >= 1"):
    get_task("generated").examples("train", count)


def test_evaluate_generated():
  task = get_task("generated")
  found = task.examples("test", 10)
  assert task.evaluate([e.targets for e in found], found) == {"accuracy": 100.0}
  wrong = [e.targets for e in found[:5]] + ["?"] * 5
  assert task.evaluate(wrong, found) == {"accuracy": 50.0}


# --- JSON Lines tasks ---------------------------------------------------------------------


def test_register_jsonl_task(jsonl_dir, scratch_names):
  scratch_names.append("my_numbers")
  task = tasks.register_jsonl_task("my_numbers", jsonl_dir, input_prefix="spell: ",
                                   metric_names=("accuracy", "squad"),
                                   references_field="answers", max_input_bytes=9)
  assert get_task("my_numbers") is task
  assert task.splits() == ("train", "validation")
  train = task.examples("train")
  assert [e.inputs for e in train] == ["spell: one", "spell: two", "spell: three"]
  assert [e.targets for e in train] == ["1", "2", "3"]
  assert train[0].references == ("1", "#1")
  assert [e.inputs for e in task.examples("train", 2)] == ["spell: one", "spell: two"]
  assert task.examples("train", 2, seed=9) == task.examples("train", 2)  # files ignore seeds
  scores = task.evaluate(["1", "#2", "x"], train)
  assert scores == {"accuracy": pytest.approx(200 / 3), "exact_match": pytest.approx(200 / 3),
                    "f1": pytest.approx(200 / 3)}


def test_jsonl_task_counts_truncation_before_the_prefix(jsonl_dir):
  source = JsonlSource(jsonl_dir, max_input_bytes=3)
  read = source.read("train")
  assert [e.inputs for e in read.examples] == ["one", "two", "thr"]
  assert read.truncated == 1
  task = Task("t", source, input_prefix="> ")
  assert [e.inputs for e in task.examples("train")] == ["> one", "> two", "> thr"]


def test_jsonl_task_missing_split_lists_splits(jsonl_dir):
  task = Task("t", JsonlSource(jsonl_dir))
  with pytest.raises(ValueError, match=r"split='test' does not exist .*train, validation"):
    task.examples("test")


def test_jsonl_task_missing_directory(tmp_path):
  task = Task("t", JsonlSource(str(tmp_path / "absent")))
  with pytest.raises(FileNotFoundError, match="absent' does not exist"):
    task.splits()
  with pytest.raises(FileNotFoundError, match="absent' does not exist"):
    task.examples("validation")


def test_registration_rules(jsonl_dir, scratch_names):
  scratch_names.append("twice")
  tasks.register_jsonl_task("twice", jsonl_dir)
  with pytest.raises(ValueError, match="task 'twice' is already registered; pass replace=True"):
    tasks.register_jsonl_task("twice", jsonl_dir)
  replaced = tasks.register_jsonl_task("twice", jsonl_dir, input_prefix="x", replace=True)
  assert get_task("twice") is replaced
  with pytest.raises(ValueError, match=r"metrics \['meteor'\] are not corpus metrics"):
    tasks.register(Task("bad_metric", GeneratedSource(), metric_names=("meteor",)))
  with pytest.raises(ValueError, match="a task needs a non-empty string name"):
    tasks.register(Task("", GeneratedSource()))
  assert "bad_metric" not in tasks.task_names()


def test_use_data_dir_moves_the_local_tasks(tmp_path):
  folder = tmp_path / "samsum"
  folder.mkdir()
  (folder / "test.jsonl").write_text(json.dumps({"inputs": "A: hi", "targets": "greeting"})
                                     + "\n", encoding="utf-8")
  try:
    tasks.use_data_dir(str(tmp_path))
    task = get_task("samsum_local")
    assert task.splits() == ("test",)
    assert [e.inputs for e in task.examples("test")] == ["summarize: A: hi"]
  finally:
    tasks.use_data_dir(SHARED_DATA)
  assert get_task("samsum_local").source.directory == os.path.join(SHARED_DATA, "samsum")


def test_data_dir_from_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(tasks.DATA_DIR_ENV, str(tmp_path))
  assert tasks.default_data_dir() == str(tmp_path)
  monkeypatch.delenv(tasks.DATA_DIR_ENV)
  assert tasks.default_data_dir().endswith(os.path.join("shared", "data"))


# --- the ../shared/data tasks -------------------------------------------------------------

needs_shared_data = pytest.mark.skipif(not os.path.isdir(SHARED_DATA),
                                       reason=f"{SHARED_DATA} is absent")


@needs_shared_data
@pytest.mark.parametrize("name,split,prefix", [
    ("cnn_dailymail_local", "validation", "summarize: (CNN)"),
    ("samsum_local", "test", "summarize: Hannah: Hey"),
    ("squad_v1.1_local", "validation", "question: Which NFL team"),
    ("wmt14_en_de_local", "test", "translate English to German: Gutach"),
    ("wmt14_en_fr_local", "test", "translate English to French: Spectacular"),
    ("wmt15_en_fr_local", "test", "translate English to French: This is perfectly"),
])
def test_shared_data_tasks(name, split, prefix):
  task = get_task(name)
  found = task.examples(split, 20)
  assert len(found) == 20
  assert found[0].inputs.startswith(prefix)
  scores = task.evaluate([e.targets for e in found], found)
  for metric, value in scores.items():
    assert value == pytest.approx(100.0), metric  # the targets score perfectly


@needs_shared_data
def test_shared_squad_scores_against_every_answer():
  task = get_task("squad_v1.1_local")
  found = task.examples("validation", 200)
  assert any(len(set(e.references)) > 1 for e in found)
  last_answers = [e.references[-1] for e in found]
  assert task.evaluate(last_answers, found)["exact_match"] == pytest.approx(100.0)
  first_only = metrics.squad(last_answers, [e.targets for e in found])
  assert first_only["exact_match"] < 100.0


def test_a_missing_local_dataset_names_the_data_dir_and_the_seqio_task(tmp_path):
  try:
    tasks.use_data_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=(
        f"JSON Lines task directory '{tmp_path}/samsum' does not exist; put "
        f"samsum/<split>.jsonl under the data directory \\(now '{tmp_path}'; set "
        r"\$CALM_JAX_DATA_DIR to the folder holding samsum/\), or read the full dataset "
        r"through seqio/TFDS with data.task=calm_samsum \(pip install -r "
        r"requirements-seqio.txt\)")):
      get_task("samsum_local").check_split("test")
  finally:
    tasks.use_data_dir(SHARED_DATA)


def test_an_empty_split_or_a_late_malformed_line_is_found_by_the_split_check(tmp_path):
  (tmp_path / "test.jsonl").write_text("\n\n", encoding="utf-8")
  rows = [json.dumps({"inputs": str(i), "targets": str(i)}) for i in range(3)]
  (tmp_path / "validation.jsonl").write_text("\n".join(rows + ['{"inputs": 3}']) + "\n",
                                             encoding="utf-8")
  task = Task("t", JsonlSource(str(tmp_path)))
  with pytest.raises(ValueError, match=f"^{tmp_path}/test.jsonl holds no examples; a split "
                     "needs at least one line with 'inputs' and 'targets'$"):
    task.check_split("test")
  path = tmp_path / "validation.jsonl"
  with pytest.raises(ValueError, match=f"^{path}:4: field 'inputs' must be a string; got int "
                     "3; fix the line, or skip and count such lines with "
                     r"--config.data.skip_malformed=True"):
    task.check_split("validation")  # the whole file, not only its first example
  skipping = task.skipping_malformed()
  skipping.check_split("validation")
  assert [e.inputs for e in skipping.examples("validation")] == ["0", "1", "2"]
  generated_task = Task("g", GeneratedSource())
  assert generated_task.skipping_malformed() == generated_task  # nothing to skip
