"""The training loop shared by CALM fine-tuning and exit-classifier training.

`fit` trains the parameters it is given with a loss `loss_fn(params, frozen, batch, rng)`,
where `frozen` (the backbone when training exit classifiers) is an input the optimizer
never sees. It places parameters and batches on a ('data', 'model') mesh, checkpoints with
Orbax, resumes from the workdir's latest checkpoint, and logs each step's metrics to
`<name>_metrics.jsonl`, TensorBoard events and a console line (process 0 only).

Determinism: the batch of step s depends only on (seed, s) and dropout's key is
fold_in(PRNGKey(seed), s), so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from calm_jax.utils.files import write_jsonl_atomically
from calm_jax.utils.progress import duration
from calm_jax.training import data as data_lib
from calm_jax.training.checkpoints import TrainCheckpoints, parameter_shapes
from calm_jax.training.objectives import Batch
from calm_jax.training.sharding import batch_sharding, param_shardings, replicated

LossFn = Callable[[Any, Any, Batch, jax.Array], Tuple[jax.Array, Dict[str, jax.Array]]]


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the run stopped before saving that state."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """Length, batch, logging and checkpointing of one training run."""

  steps: int  # optimizer steps in the whole run (a resumed run counts from its checkpoint)
  batch_size: int  # global batch, split over the mesh's data axis and the hosts
  seed: int = 0  # data order and dropout
  log_every: int = 50  # console line and TensorBoard every this many steps
  checkpoint_every: int = 500  # Orbax save every this many steps (and at the end)
  keep_checkpoints: int = 3  # checkpoints kept on disk
  async_checkpoints: bool = True  # save in the background while training goes on

  def validate(self, mesh: Mesh) -> None:
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
    data_parallel = mesh.shape["data"]
    if self.batch_size % data_parallel:
      raise ValueError(f"train.batch_size={self.batch_size} is not divisible by the "
                       f"data-parallel size {data_parallel} (mesh.data)")
    if self.batch_size % jax.process_count():
      raise ValueError(f"train.batch_size={self.batch_size} is not divisible by the "
                       f"{jax.process_count()} processes")


@dataclasses.dataclass
class TrainResult:
  """What `fit` returns."""

  params: Any  # the trained parameters (sharded on the mesh)
  frozen: Any  # the untrained input (e.g. the backbone) as placed on the mesh, or None
  history: List[Dict[str, Any]]  # metrics of every step run by this call, in order
  start_step: int  # 0, or the checkpoint step the run resumed from
  last_step: int  # steps completed
  # Parameters trained beside the model's that its callers keep apart (training.calm:
  # FREE's learned KD map [d, d]), or None
  extra: Any = None


def _place(tree: Any, shardings: Any) -> Any:
  """Host arrays (equal on every process) as global arrays with the given shardings."""
  def one(leaf, sharding):
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree, shardings)


def _on_mesh(tree: Any, mesh: Mesh) -> Any:
  """Leaves left on a single device (optimizer counters made from constants) replicated
  over the mesh, so every leaf of the train state lives on the mesh's devices."""
  devices = set(mesh.devices.flat)
  return jax.tree.map(lambda a: a if a.sharding.device_set == devices
                      else jax.device_put(a, replicated(mesh)), tree)


def _host_values(metrics: Dict[str, jax.Array]) -> Dict[str, Any]:
  out = {}
  for key, value in jax.device_get(metrics).items():
    value = np.asarray(value, np.float64)
    out[key] = float(value) if value.ndim == 0 else [None if math.isnan(v) else float(v)
                                                      for v in value.tolist()]
  return out


class _Reporter:
  """Metrics file, TensorBoard events and console lines, written by process 0 only."""

  def __init__(self, workdir: str, name: str, start_step: int, total_steps: int):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, f"{name}_metrics.jsonl")
    self.name, self.total_steps, self.start_step = name, total_steps, start_step
    self.writer = None
    if not self.enabled:
      return
    kept = [r for r in _read_records(self.path) if r["step"] <= start_step]
    write_jsonl_atomically(self.path, kept)  # a resumed run drops steps it will redo
    import tensorboardX  # pylint: disable=import-outside-toplevel
    self.writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard", name))
    self.started = time.perf_counter()

  def step(self, record: Dict[str, Any], log: bool) -> None:
    if not self.enabled:
      return
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    if not log:
      return
    step = record["step"]
    for key, value in record.items():
      if key == "step":
        continue
      if isinstance(value, list):
        for layer, v in enumerate(value, 1):
          if v is not None:
            self.writer.add_scalar(f"{key}/layer_{layer}", v, step)
      else:
        self.writer.add_scalar(key, value, step)
    done = step - self.start_step
    rate = done / max(time.perf_counter() - self.started, 1e-9)
    eta = (self.total_steps - step) / rate
    self.writer.add_scalar("steps_per_second", rate, step)
    self.writer.flush()
    print(f"[{self.name}] step {step}/{self.total_steps}  loss {record['loss']:.4f}  "
          f"{rate:.2f} steps/s  ETA {duration(eta)}", flush=True)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _read_records(path: str) -> List[Dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def read_metrics(workdir: str, name: str = "train") -> List[Dict[str, Any]]:
  """Every step's logged metrics of the run `name` in `workdir`."""
  return _read_records(os.path.join(workdir, f"{name}_metrics.jsonl"))


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
  """(state {params, opt_state}, frozen, batch, rng) -> (new state, metrics): one step."""
  def step(state, frozen, batch, rng):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], frozen, batch, rng)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state}, metrics
  return step


def fit(loss_fn: LossFn, params: Any, optimizer: optax.GradientTransformation,
        data: data_lib.EncodedExamples, settings: LoopSettings, mesh: Mesh,
        rules: Sequence[Tuple[str, Optional[str]]], workdir: str,
        description: Dict[str, Any], *, frozen: Any = None, name: str = "train",
        stop_after: Optional[int] = None) -> TrainResult:
  """Trains `params` (host arrays) for settings.steps steps, resuming from the workdir's
  checkpoints of this `name`. `stop_after` ends this call after that many completed steps
  (simulating a preempted job: no save at that step, so a later call resumes from the last
  periodic checkpoint and recomputes the steps after it). `description` (JSON) identifies
  the model and setup; a checkpoint with a different one is refused."""
  settings.validate(mesh)
  description = {**description, "parameter_shapes": parameter_shapes(params),
                 "seed": settings.seed, "batch_size": settings.batch_size,
                 "total_steps": settings.steps}
  shardings = param_shardings(params, mesh, rules)
  params = _place(params, shardings)
  if frozen is not None:
    frozen = _place(frozen, param_shardings(frozen, mesh, rules))
  state = {"params": params, "opt_state": _on_mesh(jax.jit(optimizer.init)(params), mesh)}
  checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints", name),
                                 save_every=settings.checkpoint_every,
                                 keep=settings.keep_checkpoints,
                                 asynchronous=settings.async_checkpoints)
  start = checkpoints.latest_step() or 0
  if start:
    state = checkpoints.restore(start, state, description)
    if jax.process_index() == 0:
      print(resume_notice(name, start, settings.steps, checkpoints), flush=True)
  state_shardings = jax.tree.map(lambda a: a.sharding, state)
  step_fn = jax.jit(make_train_step(loss_fn, optimizer), donate_argnums=0,
                    out_shardings=(state_shardings, replicated(mesh)))
  rows_sharding = batch_sharding(mesh)
  base_key = jax.random.PRNGKey(settings.seed)
  reporter = _Reporter(workdir, name, start, settings.steps)
  end = settings.steps if stop_after is None else min(settings.steps, stop_after)
  history = []
  try:
    for step in range(start + 1, end + 1):
      batch = data_lib.device_batch(data, step - 1, settings.batch_size, settings.seed,
                                    rows_sharding)
      state, metrics = step_fn(state, frozen, batch, jax.random.fold_in(base_key, step))
      record = {"step": step, **_host_values(metrics)}
      _check_finite(record, name, checkpoints)
      history.append(record)
      reporter.step(record, log=step % settings.log_every == 0 or step == end)
      checkpoints.save(step, state, description, force=step == settings.steps)
  finally:
    checkpoints.wait()
    checkpoints.close()
    reporter.close()
  return TrainResult(params=state["params"], frozen=frozen, history=history,
                     start_step=start, last_step=max(end, start))


def resume_notice(name: str, start: int, steps: int, checkpoints: TrainCheckpoints) -> str:
  """What a resumed run says first: the step it resumes from, and a changed run length
  (the learning-rate schedule ends at the last step, so it changes with it)."""
  lines = [f"[{name}] resuming from step {start} of {steps} "
           f"({os.path.join(checkpoints.directory, str(start))})"]
  stored = checkpoints.stored_description(start)
  before = stored.get("total_steps")
  if before is not None and before != steps:
    schedule = stored.get("optimizer", {}).get("schedule", "?")
    lines.append(f"[{name}] notice: the run was started with {before} steps and now has "
                 f"{steps}: its {schedule!r} learning-rate schedule now ends at step {steps}, "
                 f"so the steps after {start} follow a different schedule than the first run "
                 "planned (use a new workdir to train from scratch)")
  if start >= steps:
    lines.append(f"[{name}] nothing left to train: the checkpoint is at step {start}, the "
                 f"run has {steps} steps")
  return "\n".join(lines)


def _check_finite(record: Dict[str, Any], name: str, checkpoints: TrainCheckpoints) -> None:
  """A NaN or infinite loss or gradient norm stops the run before its state is saved."""
  for key in ("loss", "grad_norm"):
    if not math.isfinite(record[key]):
      raise NonFiniteLossError(
          f"[{name}] the {key.replace('_', ' ')} at step {record['step']} is {record[key]}; "
          f"training stopped without saving that state. The last good checkpoint is step "
          f"{checkpoints.latest_step()} in {checkpoints.directory}")
