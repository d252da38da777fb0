"""seqio task registrations for every dataset of the CALM studies (optional dependency).

The only module of the project that imports seqio, TensorFlow or TensorFlow Datasets;
install them with `pip install -r requirements-seqio.txt`. Importing it registers, with the
byte vocabulary (seqio.ByteVocabulary, the same ids as data/byte_vocab.py):

  calm_cnn_dailymail   TFDS cnn_dailymail:3.4.0 (non-anonymised, cased: HF's "3.0.0")
  calm_xsum            TFDS xsum:1.1.0 (manual download into the TFDS manual dir)
  calm_samsum          TFDS samsum:1.0.0 (manual download into the TFDS manual dir)
  calm_multi_news      TFDS multi_news:2.1.0
  calm_big_patent      TFDS big_patent/all:2.1.2
  calm_squad_v1.1      TFDS squad/v1.1:3.0.0, open book: "question: <q> context: <c>"
  calm_wmt15_en_fr     TFDS wmt15_translate/fr-en:1.0.0, English -> French
  calm_wmt14_en_de     TFDS wmt14_translate/de-en:1.0.0, English -> German
  calm_iwslt2017_en_de JSON Lines in <data dir>/iwslt2017_en_de/ (not in TFDS; see
                       iwslt2017_instructions())
  calm_generated[_<kind>]  the generated offline family (generated.py)
  calm_<name>_local    the JSON Lines tasks of tasks.py (../shared/data)

`register_all(sentencepiece_vocabulary(path), suffix="_t5")` registers the same tasks
under `<name>_t5` with a SentencePiece vocabulary (a .model file or a Hugging Face
tokenizer directory holding spiece.model), for T5 checkpoints.

Summaries and translations are scored with ROUGE / BLEU (metrics.py, 0-100); SQuAD with
exact match and F1 against every reference answer; generated tasks with accuracy.

The run modes (modes/context.py) read a task as text with `text_examples` (the task's
preprocessors, no shuffling) and score it with `metric_names`; they tokenize with their own
data.vocabulary.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from calm_jax.data import generated, metrics, tasks

# TensorFlow only feeds input pipelines here; keep it off accelerators JAX uses.
tf.config.set_visible_devices([], "GPU")

TASK_PREFIX = "calm_"
SUMMARIZE = "summarize: "
GENERATED_EVAL_EXAMPLES = 1000  # size of the generated validation and test splits
SENTENCEPIECE_FILE = "spiece.model"  # the T5 vocabulary's name in HF tokenizer directories


# --- vocabularies ------------------------------------------------------------------------


def byte_vocabulary() -> seqio.Vocabulary:
  """Bytes shifted by 3 after pad 0, EOS 1, UNK 2: the ids of data/byte_vocab.py."""
  return seqio.ByteVocabulary()


def sentencepiece_vocabulary(path: str) -> seqio.Vocabulary:
  """A SentencePiece vocabulary from a .model file or a directory holding spiece.model
  (a Hugging Face T5 tokenizer directory)."""
  model = os.path.join(path, SENTENCEPIECE_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(model):
    raise FileNotFoundError(f"no SentencePiece model at {model!r}: pass a .model file or a "
                            f"tokenizer directory holding {SENTENCEPIECE_FILE}")
  return seqio.SentencePieceVocabulary(model)


def output_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  """inputs and targets in `vocabulary`, each ending with EOS."""
  return {"inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


# --- postprocessors and metric functions ------------------------------------------------


def references_from_example(output: str, example=None, is_target: bool = False):
  """Predictions stripped; a target becomes its example's `references` list when the
  example has one (every SQuAD answer, a JSON Lines references field), else stripped."""
  if is_target and example is not None and "references" in example:
    return [_text(reference) for reference in example["references"]]
  return output.strip()


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def seqio_metric_fn(name: str) -> Callable[..., Dict[str, float]]:
  """metrics.CORPUS_METRICS[name] with seqio's (targets, predictions) signature."""
  metric = metrics.CORPUS_METRICS[name]

  def metric_fn(targets, predictions):
    return metric(list(predictions), [t if isinstance(t, str) else list(t) for t in targets])

  metric_fn.__name__ = f"{name}_metric"
  metric_fn.corpus_metric = name  # read back by metric_names
  return metric_fn


# --- preprocessors ------------------------------------------------------------------------


def _map(fn: Callable[[Mapping[str, tf.Tensor]], Dict[str, tf.Tensor]]):
  """A seqio preprocessor applying `fn` to every example."""

  @seqio.map_over_dataset
  def preprocess(x):
    return fn(x)

  return preprocess


def text_pair(input_key: str, target_key: str, prefix: str):
  """{inputs: prefix + x[input_key], targets: x[target_key]}."""
  return _map(lambda x: {"inputs": tf.strings.join([prefix, x[input_key]]),
                         "targets": x[target_key]})


def squad_open_book(x):
  """SQuAD v1.1 as T5's open-book QA: the first answer is the target; every answer is
  kept as `references` for the metric."""
  answers = x["answers"]["text"]
  return {"inputs": tf.strings.join(["question: ", x["question"], " context: ",
                                     x["context"]]),
          "targets": answers[0], "references": answers}


def _pipeline(first_step: Optional[Callable], cacheable: bool = True) -> List:
  """[first_step], tokenize, [cache], trim and append EOS."""
  first = [first_step] if first_step else []
  cache = [seqio.CacheDatasetPlaceholder()] if cacheable else []
  return [*first, seqio.preprocessors.tokenize, *cache,
          seqio.preprocessors.append_eos_after_trim]


# --- the TFDS datasets --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """One TFDS dataset: its TFDS name, first preprocessing step and metric."""
  name: str
  tfds_name: str
  first_step: Callable
  metric_names: Sequence[str]
  postprocess_fn: Callable = references_from_example
  splits: Optional[Sequence[str]] = None


TFDS_SPECS = (
    TfdsSpec("cnn_dailymail", "cnn_dailymail:3.4.0",
             text_pair("article", "highlights", SUMMARIZE), ("rouge",)),
    TfdsSpec("xsum", "xsum:1.1.0", text_pair("document", "summary", SUMMARIZE), ("rouge",)),
    TfdsSpec("samsum", "samsum:1.0.0", text_pair("dialogue", "summary", SUMMARIZE),
             ("rouge",)),
    TfdsSpec("multi_news", "multi_news:2.1.0", text_pair("document", "summary", SUMMARIZE),
             ("rouge",)),
    TfdsSpec("big_patent", "big_patent/all:2.1.2",
             text_pair("description", "abstract", SUMMARIZE), ("rouge",)),
    TfdsSpec("squad_v1.1", "squad/v1.1:3.0.0", _map(squad_open_book), ("squad",),
             splits=("train", "validation")),
    TfdsSpec("wmt15_en_fr", "wmt15_translate/fr-en:1.0.0",
             text_pair("en", "fr", "translate English to French: "), ("bleu",)),
    TfdsSpec("wmt14_en_de", "wmt14_translate/de-en:1.0.0",
             text_pair("en", "de", "translate English to German: "), ("bleu",)),
)


def _add(task: seqio.Task) -> seqio.Task:
  """Registers `task`, replacing an earlier registration of the same name."""
  if task.name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(task.name)
  seqio.TaskRegistry.add_provider(task.name, task)
  return task


def register_tfds_task(spec: TfdsSpec, vocabulary: seqio.Vocabulary, suffix: str = "",
                       tfds_data_dir: Optional[str] = None) -> seqio.Task:
  """Registers one TFDS dataset as `calm_<spec.name><suffix>`."""
  source = seqio.TfdsDataSource(spec.tfds_name, tfds_data_dir=tfds_data_dir,
                                splits=spec.splits)
  return _add(seqio.Task(f"{TASK_PREFIX}{spec.name}{suffix}", source,
                         output_features(vocabulary), _pipeline(spec.first_step),
                         postprocess_fn=spec.postprocess_fn,
                         metric_fns=[seqio_metric_fn(m) for m in spec.metric_names]))


# --- tasks from plain Python sources (generated, JSON Lines) ------------------------------


def _examples_dataset(examples: Sequence) -> tf.data.Dataset:
  """{inputs, targets, references} string features from examples of tasks.py."""
  if not examples:
    raise ValueError("no examples to build a dataset from")
  return tf.data.Dataset.from_tensor_slices({
      "inputs": tf.constant([e.inputs for e in examples], tf.string),
      "targets": tf.constant([e.targets for e in examples], tf.string),
      "references": tf.ragged.constant([list(e.references) for e in examples], tf.string),
  })


def _generated_train(kinds: Sequence[str], seed: int) -> tf.data.Dataset:
  stream = generated.example_stream("train", seed, kinds)
  return tf.data.Dataset.from_generator(
      lambda: ({"inputs": e.inputs, "targets": e.targets, "references": [e.targets]}
               for e in stream),
      output_signature={"inputs": tf.TensorSpec((), tf.string),
                        "targets": tf.TensorSpec((), tf.string),
                        "references": tf.TensorSpec((None,), tf.string)})


def _plain_dataset_fn(task: tasks.Task):
  """seqio's dataset_fn(split, shuffle_files, seed) for a tasks.py task."""

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
    del shuffle_files
    seed = 0 if seed is None else int(seed)
    if isinstance(task.source, tasks.GeneratedSource) and split == "train":
      return _generated_train(task.source.kinds, seed)  # endless
    count = GENERATED_EVAL_EXAMPLES if isinstance(task.source, tasks.GeneratedSource) else None
    return _examples_dataset(task.examples(split, count, seed))

  return dataset_fn


def _plain_splits(task: tasks.Task) -> Sequence[str]:
  try:
    return task.splits()
  except FileNotFoundError:
    return ("train", "validation", "test")  # the folder may appear later


def register_plain_task(task: tasks.Task, vocabulary: seqio.Vocabulary,
                        suffix: str = "") -> seqio.Task:
  """Registers a tasks.py task (generated or JSON Lines) as `calm_<task.name><suffix>`;
  its input prefix is already part of the examples."""
  source = seqio.FunctionDataSource(_plain_dataset_fn(task), splits=_plain_splits(task),
                                    caching_permitted=False)
  return _add(seqio.Task(f"{TASK_PREFIX}{task.name}{suffix}", source,
                         output_features(vocabulary), _pipeline(None, cacheable=False),
                         postprocess_fn=references_from_example,
                         metric_fns=[seqio_metric_fn(m) for m in task.metric_names]))


def iwslt2017_instructions() -> str:
  """How to source IWSLT2017 en-de, which TFDS does not carry."""
  return ("IWSLT2017 en-de is not in TFDS. Write <data dir>/iwslt2017_en_de/{train,"
          "validation,test}.jsonl with one {\"inputs\": English, \"targets\": German} "
          "object a line, e.g. from the Hugging Face dataset 'iwslt2017' (config "
          "'iwslt2017-en-de') or the official WIT3 XML release (dev2010 = validation, "
          "tst2017 = test).")


def iwslt2017_task(data_dir: str) -> tasks.Task:
  directory = os.path.join(data_dir, "iwslt2017_en_de")
  return tasks.Task("iwslt2017_en_de", tasks.JsonlSource(directory),
                    "translate English to German: ", ("bleu",), iwslt2017_instructions())


def register_all(vocabulary: Optional[seqio.Vocabulary] = None, suffix: str = "",
                 data_dir: Optional[str] = None,
                 tfds_data_dir: Optional[str] = None) -> List[str]:
  """Registers every task with `vocabulary` (bytes when None); returns the names."""
  vocabulary = vocabulary or byte_vocabulary()
  data_dir = data_dir or tasks.default_data_dir()
  registered = [register_tfds_task(spec, vocabulary, suffix, tfds_data_dir)
                for spec in TFDS_SPECS]
  plain = [tasks.get_task(name) for name in tasks.GENERATED_TASKS]
  plain += list(tasks.local_tasks(data_dir)) + [iwslt2017_task(data_dir)]
  registered += [register_plain_task(task, vocabulary, suffix) for task in plain]
  return [task.name for task in registered]


# --- text examples for the run modes (modes/context.py) ----------------------------------


@dataclasses.dataclass(frozen=True)
class TextExample:
  """One example of a seqio task as text, before any tokenization.

  Attributes:
    inputs: the preprocessed input (task prefix included).
    targets: the expected output.
    references: every acceptable output (the example's `references` feature, else
      (targets,)).
  """
  inputs: str
  targets: str
  references: Tuple[str, ...]


def calm_task_names() -> Tuple[str, ...]:
  """Every seqio task registered under TASK_PREFIX (this module's and later ones), sorted."""
  return tuple(sorted(n for n in seqio.TaskRegistry.names() if n.startswith(TASK_PREFIX)))


def get_calm_task(name: str) -> seqio.Task:
  """The seqio task `name`; an unknown name lists the registered calm_ tasks."""
  if name not in calm_task_names():
    raise ValueError(f"seqio task {name!r} is not registered; registered: "
                     f"{', '.join(calm_task_names())}")
  return seqio.get_mixture_or_task(name)


def metric_names(name: str) -> Tuple[str, ...]:
  """The corpus metrics (keys of metrics.CORPUS_METRICS) that score seqio task `name`."""
  fns = get_calm_task(name).metric_fns
  return tuple(fn.corpus_metric for fn in fns if hasattr(fn, "corpus_metric"))


def task_splits(name: str) -> Tuple[str, ...]:
  """The splits of seqio task `name`; () for a TFDS dataset not prepared yet and declaring
  none (TFDS names them once it has prepared the data)."""
  return tuple(get_calm_task(name).source.splits)


def text_examples(name: str, split: str, count: int, seed: int) -> List[TextExample]:
  """The first `count` examples of `split`, in source order (no shuffling; `seed` picks a
  generated stream), as text: the task's preprocessors run, tokens are not kept."""
  splits = task_splits(name)
  if splits and split not in splits:
    raise ValueError(f"seqio task {name!r} has no split {split!r}; its splits: "
                     f"{', '.join(splits)}")
  dataset = get_calm_task(name).get_dataset(None, split=split, shuffle=False, seed=seed,
                                            try_in_mem_cache=False)
  return [_text_example(x) for x in dataset.take(count).as_numpy_iterator()]


def _text_example(features: Mapping) -> TextExample:
  """TextExample from a preprocessed example's `*_pretokenized` strings."""
  targets = _text(features["targets_pretokenized"])
  references = tuple(_text(r) for r in features.get("references", ()))
  return TextExample(_text(features["inputs_pretokenized"]), targets, references or (targets,))


TASK_NAMES = tuple(register_all())
