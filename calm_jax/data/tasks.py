"""A task registry that needs neither seqio nor TensorFlow.

A Task names a source of (inputs, targets) examples, the prefix prepended to every input
(T5's "summarize: ", "translate English to German: "), and the corpus metrics that score
it (names of metrics.CORPUS_METRICS). Registered here:

- `generated` and `generated_<kind>`: the generated offline family (generated.py);
- `<dataset>_local`: the JSON Lines evaluation sets of ../shared/data (or of the
  directory in $CALM_JAX_DATA_DIR), read with jsonl.py; absent folders fail at load time;
- anything registered with `register_jsonl_task` (your own data).

The TFDS datasets of the CALM studies are registered with seqio in seqio_tasks.py, which
is the only module that imports seqio or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

from calm_jax.data import generated, jsonl, metrics

DATA_DIR_ENV = "CALM_JAX_DATA_DIR"


def default_data_dir() -> str:
  """$CALM_JAX_DATA_DIR, else ../shared/data next to the repository."""
  repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.environ.get(DATA_DIR_ENV) or os.path.join(os.path.dirname(repo_root), "shared",
                                                      "data")


@dataclasses.dataclass(frozen=True)
class GeneratedSource:
  """The generated family, restricted to `kinds`."""
  kinds: Tuple[str, ...] = generated.KINDS

  def splits(self) -> Tuple[str, ...]:
    return generated.SPLITS

  def examples(self, split: str, count: Optional[int], seed: int) -> List[generated.Example]:
    if count is None:
      raise ValueError("count=None: a generated split is endless; pass how many examples")
    return generated.examples(split, count, seed, self.kinds)


@dataclasses.dataclass(frozen=True)
class JsonlSource:
  """`<directory>/<split>.jsonl` files, read with jsonl.read_jsonl's options."""
  directory: str
  skip_malformed: bool = False
  max_input_bytes: Optional[int] = None
  references_field: Optional[str] = None
  missing_hint: str = ""  # said when the directory does not exist: where the data comes from

  def splits(self) -> Tuple[str, ...]:
    self._check_directory()
    return tuple(jsonl.split_files(self.directory))

  def examples(self, split: str, count: Optional[int], seed: int) -> List[jsonl.JsonlExample]:
    del seed  # files are read in order
    found = self.read(split, count)
    if not found.examples:
      skipped = f" ({found.skipped} malformed lines skipped)" if found.skipped else ""
      raise ValueError(f"{found.path} holds no examples{skipped}; a split needs at least one "
                       "line with 'inputs' and 'targets'")
    return list(found.examples)

  def read(self, split: str, count: Optional[int] = None) -> jsonl.JsonlSplit:
    """The split with its skip and truncation counts."""
    self._check_directory()
    return jsonl.read_split(self.directory, split, skip_malformed=self.skip_malformed,
                            max_input_bytes=self.max_input_bytes,
                            references_field=self.references_field, max_examples=count)

  def _check_directory(self) -> None:
    if not os.path.isdir(self.directory):
      raise FileNotFoundError(f"JSON Lines task directory {self.directory!r} does not exist"
                              f"{'; ' + self.missing_hint if self.missing_hint else ''}")


Source = Union[GeneratedSource, JsonlSource]
Example = Union[generated.Example, jsonl.JsonlExample]


@dataclasses.dataclass(frozen=True)
class Task:
  """A named source of examples with its input prefix and metrics.

  Attributes:
    name: the registry name.
    source: where examples come from (GeneratedSource or JsonlSource).
    input_prefix: prepended to every example's inputs.
    metric_names: corpus metrics that score it (keys of metrics.CORPUS_METRICS).
    description: one line for listings.
  """
  name: str
  source: Source
  input_prefix: str = ""
  metric_names: Tuple[str, ...] = ("accuracy",)
  description: str = ""

  def splits(self) -> Tuple[str, ...]:
    """The splits that exist (for files: the ones on disk now)."""
    return self.source.splits()

  def check_split(self, split: str, seed: int = 0) -> None:
    """Reads `split` once, as a run's checks do before any model work: a file whole (a
    missing or empty file or a malformed line stops here), a generated split's first
    example."""
    whole = isinstance(self.source, JsonlSource)
    self.source.examples(split, None if whole else 1, seed)

  def skipping_malformed(self) -> "Task":
    """This task with malformed JSON Lines skipped and counted (files only)."""
    if not isinstance(self.source, JsonlSource):
      return self
    return dataclasses.replace(self, source=dataclasses.replace(self.source,
                                                                skip_malformed=True))

  def examples(self, split: str, count: Optional[int] = None, seed: int = 0) -> List[Example]:
    """The first `count` examples of `split` (all of a file when None), prefix applied;
    `seed` picks a generated stream and is ignored for files."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                              or count < 1):
      raise ValueError(f"count must be None or an int >= 1; got {count!r}")
    found = self.source.examples(split, count, seed)
    if not self.input_prefix:
      return found
    return [dataclasses.replace(e, inputs=self.input_prefix + e.inputs) for e in found]

  def evaluate(self, predictions: Sequence[str],
               examples: Sequence[Example]) -> Dict[str, float]:
    """This task's corpus metrics of predictions against the examples' references."""
    return metrics.evaluate(self.metric_names, predictions, [e.references for e in examples])


_REGISTRY: Dict[str, Task] = {}


def register(task: Task, *, replace: bool = False) -> Task:
  """Adds `task` under its name; an existing name needs replace=True."""
  if not isinstance(task.name, str) or not task.name:
    raise ValueError(f"a task needs a non-empty string name; got {task.name!r}")
  if task.name in _REGISTRY and not replace:
    raise ValueError(f"task {task.name!r} is already registered; pass replace=True")
  unknown = [m for m in task.metric_names if m not in metrics.CORPUS_METRICS]
  if unknown:
    raise ValueError(f"task {task.name!r}: metrics {unknown!r} are not corpus metrics; "
                     f"allowed: {', '.join(metrics.CORPUS_METRICS)}")
  _REGISTRY[task.name] = task
  return task


def register_jsonl_task(name: str, directory: str, *, input_prefix: str = "",
                        metric_names: Sequence[str] = ("accuracy",),
                        skip_malformed: bool = False, max_input_bytes: Optional[int] = None,
                        references_field: Optional[str] = None,
                        replace: bool = False) -> Task:
  """Registers `<directory>/<split>.jsonl` files as task `name`."""
  source = JsonlSource(directory, skip_malformed, max_input_bytes, references_field)
  return register(Task(name, source, input_prefix, tuple(metric_names),
                       f"JSON Lines files in {directory}"), replace=replace)


def task_names() -> Tuple[str, ...]:
  """Every registered name, sorted."""
  return tuple(sorted(_REGISTRY))


def get_task(name: str) -> Task:
  """The task registered under `name`; an unknown name lists the known ones."""
  if not isinstance(name, str) or name not in _REGISTRY:
    raise ValueError(f"task {name!r} is not registered; known tasks: "
                     f"{', '.join(task_names())} (TFDS datasets are seqio tasks: data.task="
                     "calm_<name>, e.g. calm_xsum, with requirements-seqio.txt installed)")
  return _REGISTRY[name]


def _register_generated() -> None:
  register(Task("generated", GeneratedSource(), metric_names=("accuracy",),
                description="generated offline family, every kind mixed"))
  for kind in generated.KINDS:
    register(Task(f"generated_{kind}", GeneratedSource((kind,)), metric_names=("accuracy",),
                  description=f"generated offline family, {kind} only"))


# (registry name, folder under the data dir, input prefix, metrics, references field)
_LOCAL_DATASETS = (
    ("cnn_dailymail_local", "cnn_dailymail", "summarize: ", ("rouge",), None),
    ("samsum_local", "samsum", "summarize: ", ("rouge",), None),
    ("squad_v1.1_local", "squad_v1.1", "", ("squad",), "answers"),
    ("wmt14_en_de_local", "wmt14_en_de", "translate English to German: ", ("bleu",), None),
    ("wmt14_en_fr_local", "wmt14_en_fr", "translate English to French: ", ("bleu",), None),
    ("wmt15_en_fr_local", "wmt15_en_fr", "translate English to French: ", ("bleu",), None),
)


def missing_data_hint(data_dir: str, folder: str) -> str:
  """What to do when a local dataset's folder is missing."""
  return (f"put {folder}/<split>.jsonl under the data directory (now {data_dir!r}; set "
          f"${DATA_DIR_ENV} to the folder holding {folder}/), or read the full dataset "
          f"through seqio/TFDS with data.task=calm_{folder} (pip install -r "
          "requirements-seqio.txt)")


def local_tasks(data_dir: str) -> Tuple[Task, ...]:
  """The `<dataset>_local` tasks reading the JSON Lines sets under `data_dir`."""
  return tuple(
      Task(name, JsonlSource(os.path.join(data_dir, folder),
                             references_field=references_field,
                             missing_hint=missing_data_hint(data_dir, folder)),
           prefix, metric_names, f"JSON Lines evaluation set in {os.path.join(data_dir, folder)}")
      for name, folder, prefix, metric_names, references_field in _LOCAL_DATASETS)


def use_data_dir(data_dir: str) -> None:
  """Points the registered `<dataset>_local` tasks at another data directory."""
  for task in local_tasks(data_dir):
    register(task, replace=True)


_register_generated()
use_data_dir(default_data_dir())

LOCAL_TASKS = tuple(entry[0] for entry in _LOCAL_DATASETS)
GENERATED_TASKS = ("generated",) + tuple(f"generated_{kind}" for kind in generated.KINDS)
