"""seqio task registrations on tfds.testing.mock_data (no network): every TFDS task's
pipeline, prefixes and feature shapes; the generated and JSON Lines tasks; postprocessors
and metric functions; vocabularies. Skipped when seqio is not installed
(pip install -r requirements-seqio.txt)."""

import json
import os
import subprocess
import sys

import pytest

seqio = pytest.importorskip("seqio")
tfds = pytest.importorskip("tensorflow_datasets")

from calm_jax.data import byte_vocab, generated, metrics, seqio_tasks, tasks  # pylint: disable=wrong-import-position

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENGTHS = {"inputs": 40, "targets": 12}

PREFIXES = {
    "cnn_dailymail": "summarize: ",
    "xsum": "summarize: ",
    "samsum": "summarize: ",
    "multi_news": "summarize: ",
    "big_patent": "summarize: ",
    "squad_v1.1": "question: ",
    "wmt15_en_fr": "translate English to French: ",
    "wmt14_en_de": "translate English to German: ",
}


def _first(name, split="validation", count=3, lengths=None):
  task = seqio.get_mixture_or_task(name)
  dataset = task.get_dataset(lengths or LENGTHS, split=split, shuffle=False,
                             try_in_mem_cache=False, seed=0)
  return list(dataset.take(count).as_numpy_iterator())


def _check_features(example, lengths=LENGTHS):
  for key, length in lengths.items():
    ids = example[key]
    assert ids.ndim == 1 and 1 <= len(ids) <= length
    assert ids[-1] == byte_vocab.EOS_ID
    assert (ids[:-1] >= byte_vocab.NUM_SPECIAL).all() and (ids < byte_vocab.VOCAB_SIZE).all()
    text = example[f"{key}_pretokenized"].decode("utf-8")
    # Byte ids are exactly data/byte_vocab.py's, cut to the length before EOS.
    assert list(ids) == byte_vocab.encode(text)[:-1][:length - 1] + [byte_vocab.EOS_ID]


def test_every_dataset_of_the_issue_is_registered():
  expected = {f"calm_{name}" for name in PREFIXES} | {"calm_iwslt2017_en_de"}
  expected |= {f"calm_{name}" for name in tasks.GENERATED_TASKS + tasks.LOCAL_TASKS}
  assert set(seqio_tasks.TASK_NAMES) == expected
  assert expected <= set(seqio.TaskRegistry.names())


@pytest.mark.parametrize("name", sorted(PREFIXES))
def test_tfds_task_pipeline_on_mock_data(name):
  with tfds.testing.mock_data(num_examples=4):
    found = _first(f"calm_{name}", count=4)
  assert len(found) == 4
  for example in found:
    assert example["inputs_pretokenized"].decode().startswith(PREFIXES[name])
    _check_features(example)
  task = seqio.get_mixture_or_task(f"calm_{name}")
  assert set(task.output_features) == {"inputs", "targets"}
  assert all(f.add_eos for f in task.output_features.values())


def test_squad_keeps_every_answer_for_the_metric():
  with tfds.testing.mock_data(num_examples=2):
    example = _first("calm_squad_v1.1", count=1)[0]
  inputs = example["inputs_pretokenized"].decode()
  assert inputs.startswith("question: ") and " context: " in inputs
  answers = [a.decode() for a in example["references"]]
  assert len(answers) > 1 and example["targets_pretokenized"].decode() == answers[0]
  task = seqio.get_mixture_or_task("calm_squad_v1.1")
  assert task.postprocess_fn(" x ", example=example, is_target=True) == answers
  assert task.postprocess_fn(" x ", example=example, is_target=False) == "x"


def test_squad_metric_takes_the_best_answer():
  task = seqio.get_mixture_or_task("calm_squad_v1.1")
  targets, predictions = [["Denver Broncos", "Broncos"], ["cat on mat"]], ["Broncos", "cat sat"]
  scores = {}
  for fn in task.metric_fns:
    scores.update(fn(targets, predictions))
  assert scores == metrics.squad(predictions, targets)
  assert scores["exact_match"] == pytest.approx(50.0)


@pytest.mark.parametrize("name,expected", [
    ("calm_cnn_dailymail", metrics.corpus_rouge),
    ("calm_wmt14_en_de", lambda p, t: {"bleu": metrics.corpus_bleu(p, t)}),
    ("calm_generated", lambda p, t: {"accuracy": metrics.accuracy(p, t)}),
])
def test_metric_functions_are_the_corpus_metrics(name, expected):
  targets = ["the cat sat on the mat\nit was happy", "a quick brown fox"]
  predictions = ["the cat sat on a mat", "a quick brown fox"]
  (fn,) = seqio.get_mixture_or_task(name).metric_fns
  assert fn(targets, predictions) == expected(predictions, targets)


def test_generated_task_is_the_generator():
  found = _first("calm_generated", split="validation", count=5, lengths={"inputs": 49,
                                                                         "targets": 25})
  expected = generated.examples("validation", 5, seed=0)
  assert [e["inputs_pretokenized"].decode() for e in found] == [e.inputs for e in expected]
  assert [e["targets_pretokenized"].decode() for e in found] == [e.targets for e in expected]
  for example in found:
    _check_features(example, {"inputs": 49, "targets": 25})


def test_generated_splits():
  task = seqio.get_mixture_or_task("calm_generated_add")
  validation = list(task.get_dataset({"inputs": 49, "targets": 25}, split="validation",
                                     shuffle=False, seed=0).as_numpy_iterator())
  assert len(validation) == seqio_tasks.GENERATED_EVAL_EXAMPLES
  assert all(e["inputs_pretokenized"].startswith(b"add: ") for e in validation)
  train = _first("calm_generated_add", split="train", count=50,
                 lengths={"inputs": 49, "targets": 25})
  train_inputs = {e["inputs_pretokenized"] for e in train}
  assert len(train) == 50
  assert not train_inputs & {e["inputs_pretokenized"] for e in validation}
  assert [e.decode() for e in sorted(train_inputs)] == sorted(
      e.inputs for e in generated.examples("train", 50, 0, ("add",)))


def test_jsonl_task_with_prefix_and_references(tmp_path):
  with open(tmp_path / "validation.jsonl", "w", encoding="utf-8") as handle:
    for i in range(3):
      handle.write(json.dumps({"inputs": f"question {i}", "targets": f"answer {i}",
                               "answers": [f"answer {i}", f"reply {i}"]}) + "\n")
  task = tasks.Task("scratch_qa", tasks.JsonlSource(str(tmp_path), references_field="answers"),
                    input_prefix="qa: ", metric_names=("squad",))
  seqio_task = seqio_tasks.register_plain_task(task, seqio_tasks.byte_vocabulary(), "_test")
  try:
    assert seqio_task.name == "calm_scratch_qa_test"
    assert seqio_task.splits == ("validation",)
    found = _first("calm_scratch_qa_test", count=5)
    assert [e["inputs_pretokenized"].decode() for e in found] == [
        "qa: question 0", "qa: question 1", "qa: question 2"]
    targets = [seqio_task.postprocess_fn("", example=e, is_target=True) for e in found]
    assert targets == [["answer 0", "reply 0"], ["answer 1", "reply 1"], ["answer 2", "reply 2"]]
    for example in found:
      _check_features(example)
  finally:
    seqio.TaskRegistry.remove("calm_scratch_qa_test")


def test_iwslt2017_reads_json_lines_from_the_data_dir(tmp_path):
  folder = tmp_path / "iwslt2017_en_de"
  folder.mkdir()
  (folder / "test.jsonl").write_text(json.dumps({"inputs": "Thank you.", "targets": "Danke."})
                                     + "\n", encoding="utf-8")
  seqio_task = seqio_tasks.register_plain_task(seqio_tasks.iwslt2017_task(str(tmp_path)),
                                               seqio_tasks.byte_vocabulary(), "_test")
  try:
    (example,) = _first("calm_iwslt2017_en_de_test", split="test")
    assert example["inputs_pretokenized"] == b"translate English to German: Thank you."
    assert example["targets_pretokenized"] == "Danke.".encode()
  finally:
    seqio.TaskRegistry.remove(seqio_task.name)
  assert "WIT3" in seqio_tasks.iwslt2017_instructions()


def test_missing_jsonl_folder_fails_at_load_time(tmp_path):
  seqio_task = seqio_tasks.register_plain_task(seqio_tasks.iwslt2017_task(str(tmp_path)),
                                               seqio_tasks.byte_vocabulary(), "_absent")
  try:
    assert seqio_task.splits == ("train", "validation", "test")
    with pytest.raises(FileNotFoundError, match="iwslt2017_en_de' does not exist"):
      _first(seqio_task.name)
  finally:
    seqio.TaskRegistry.remove(seqio_task.name)


def test_byte_vocabulary_matches_byte_vocab():
  vocabulary = seqio_tasks.byte_vocabulary()
  text = "sum: 42 – café"
  assert vocabulary.encode(text) == byte_vocab.encode(text)[:-1]
  assert vocabulary.eos_id == byte_vocab.EOS_ID and vocabulary.pad_id == byte_vocab.PAD_ID


def test_sentencepiece_vocabulary(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(e.inputs + " " + e.targets
                              for e in generated.examples("train", 400, 0)), encoding="utf-8")
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"),
                                 vocab_size=60, model_type="unigram", pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1)
  for path in (str(tmp_path / "spiece.model"), str(tmp_path)):  # file or HF-style folder
    vocabulary = seqio_tasks.sentencepiece_vocabulary(path)
    assert vocabulary.decode(vocabulary.encode("sum: 42")) == "sum: 42"
  task = tasks.get_task("generated_copy")
  seqio_task = seqio_tasks.register_plain_task(task, vocabulary, "_sp_test")
  try:
    (example,) = _first(seqio_task.name, count=1)
    assert list(example["inputs"][:-1]) == vocabulary.encode(
        example["inputs_pretokenized"].decode())
  finally:
    seqio.TaskRegistry.remove(seqio_task.name)


def test_missing_sentencepiece_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no SentencePiece model at .*spiece\.model"):
    seqio_tasks.sentencepiece_vocabulary(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"no SentencePiece model at .*t5\.model"):
    seqio_tasks.sentencepiece_vocabulary(str(tmp_path / "t5.model"))


def test_register_all_with_a_suffix():
  names = seqio_tasks.register_all(suffix="_copy_test")
  try:
    assert names == [f"{name}_copy_test" for name in seqio_tasks.TASK_NAMES]
  finally:
    for name in names:
      seqio.TaskRegistry.remove(name)


def test_tensorflow_is_confined_to_seqio_tasks():
  # Importing the package's other modules never pulls TensorFlow in.
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  code = ("import sys, calm_jax, calm_jax.data.tasks, calm_jax.data.metrics; "
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
