"""Public entry points of the early-exit decoder: `generate`, `generate_with_thresholds`
and `generate_grid`; and `decode_fixed_part`, the start every decode of some inputs shares
(encoder, cross-attention K/V), on its own, for timing.

Arguments are checked before anything is compiled. The threshold and tau are traced
arguments: a new value never recompiles (except once for thresholds that let no row leave
before the last layer, lambda >= 1: that decode runs a loop compiled without the exit
machinery, `DecodePlan.never_exits`), and `generate_grid` vmaps one compiled call over a
grid of thresholds. Learned measures (`exit_classifiers.registry.is_learned`) take their
parameters as `classifier_params`, also traced; the classifier's hyperparameters are read
off the parameter shapes, so new parameters of the same shapes never recompile either.

`layer_layout` ('auto', 'stacked', 'per_layer': model.layer_layout) chooses how the layer
loop reads each layer's weights; outputs are the same in every layout. `generate_grid`
always decodes stacked: under vmap a layer index differs per threshold, and a switch over
layers would become a select computing every layer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.decoding.early_exit import GenerateOutput, fixed_part_impl, generate_impl
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.inputs import prepare_inputs
from calm_jax.decoding.measures import MeasureContext
from calm_jax.decoding.plan import DecodeConstants, DecodePlan
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.decoding.sharded import DecodeMesh, decode_on_mesh, place_params
from calm_jax.decoding.synchronized import synchronized_impl
from calm_jax.exit_classifiers.registry import check_classifier_params, is_learned
from calm_jax.model.config import T5Config
from calm_jax.model.layer_layout import check_layout, decoding_params

def decode_impl(plan: DecodePlan, constants: DecodeConstants, input_ids, attention_mask, rng,
                skip_rows=None):
  """The traced decoder the plan asks for: per-token exits (early_exit) or FREE's
  synchronized decoding (synchronized)."""
  impl = synchronized_impl if plan.exit.decoding == "synchronized" else generate_impl
  return impl(plan, constants, input_ids, attention_mask, rng, skip_rows)


_generate_jit = jax.jit(decode_impl, static_argnames=("plan",))
_fixed_part_jit = jax.jit(fixed_part_impl, static_argnames=("plan",))


@functools.partial(jax.jit, static_argnames=("plan",))
def _generate_grid_jit(plan: DecodePlan, constants: DecodeConstants, input_ids, attention_mask,
                       rng):
  """generate_impl vmapped over constants.threshold [K] (without row compaction)."""
  plan = dataclasses.replace(plan, compact=False)
  one = lambda threshold: decode_impl(plan, constants.replace(threshold=threshold),
                                      input_ids, attention_mask, rng)
  return jax.vmap(one)(constants.threshold)


def _constants(plan: DecodePlan, params: Any, exit_config: ExitConfig, threshold,
               classifier_params: Any) -> DecodeConstants:
  """The traced constants of a call, after checking the classifier parameters against the
  measure (required for a learned measure, refused for the others)."""
  if is_learned(exit_config.measure):
    check_classifier_params(exit_config.measure, classifier_params, plan.model.d_model)
  elif classifier_params is not None:
    raise ValueError(f"classifier_params given, but measure {exit_config.measure!r} is not "
                     "a learned exit classifier")
  context = MeasureContext(params=params, classifier_params=classifier_params,
                           model_config=plan.model)
  return DecodeConstants(context=context, threshold=threshold,
                         tau=np.float32(exit_config.tau))  # host scalar: no device put


def _spans_devices(mesh: Optional[DecodeMesh]) -> bool:
  return mesh is not None and mesh.mesh.size > 1


def _layout_params(params: Any, layer_layout: str, mesh: Optional[DecodeMesh]) -> Any:
  """Params in `layer_layout`, placed on `mesh` first when it spans several devices."""
  if _spans_devices(mesh):
    return place_params(params, mesh, layer_layout)
  return decoding_params(params, layer_layout)


def _decode(plan: DecodePlan, constants: DecodeConstants, input_ids, attention_mask, rng,
            skip_rows, mesh: Optional[DecodeMesh]):
  """The compiled decode: on one device, or each data shard of `mesh` running its own loops
  (sharded.decode_on_mesh; host arrays gathered to every process)."""
  if not _spans_devices(mesh):
    return _generate_jit(plan, constants, input_ids, attention_mask, rng, skip_rows=skip_rows)
  return decode_on_mesh(decode_impl, plan, constants, input_ids, attention_mask, rng, skip_rows,
                        mesh)


def _check_rng(sampling: SamplingConfig, rng) -> jax.Array:
  if not sampling.greedy and rng is None:
    raise ValueError("sampling (temperature > 0) needs an explicit rng key")
  return rng if rng is not None else _default_rng()


@functools.lru_cache(maxsize=None)
def _default_rng() -> jax.Array:
  """PRNGKey(0), made once (greedy decoding never reads it; making it costs a dispatch)."""
  return jax.random.PRNGKey(0)


def generate(config: T5Config, params: Any, input_ids, attention_mask=None, *,
             exit: ExitConfig = ExitConfig(),  # pylint: disable=redefined-builtin
             max_decode_len: int, sampling: SamplingConfig = SamplingConfig(),
             rng: Optional[jax.Array] = None, return_trace: bool = False,
             max_input_len: Optional[int] = None,
             classifier_params: Any = None, layer_layout: str = "auto",
             mesh: Optional[DecodeMesh] = None) -> GenerateOutput:
  """Early-exit decoding of input ids [B, S] (attention_mask: 1 keep, 0 pad).

  Returns tokens, exit layers and exit confidences, each [B, max_decode_len], and with
  `return_trace` the per-layer confidences [B, max_decode_len, L]. `classifier_params`:
  the parameters of a learned measure (required for those, refused for the others).
  `mesh` (sharded.DecodeMesh): the rows split over its 'data' axis, each shard running its
  own loops, the parameters over 'model'; the outputs then come back as host arrays.
  With `exit.decoding='synchronized'` the result is a `SynchronizedOutput` (FREE: the
  same three fields, plus deep passes per example and the deep layers' verdicts).
  """
  plan = DecodePlan.checked(config, exit, sampling, max_decode_len, return_trace)
  check_layout(layer_layout)
  rng = _check_rng(sampling, rng)
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, max_input_len)
  params = _layout_params(params, layer_layout, mesh)
  threshold = np.float32(exit.threshold)
  constants = _constants(plan, params, exit, threshold, classifier_params)
  return _decode(plan.for_thresholds(threshold), constants, input_ids, attention_mask, rng,
                 None, mesh)


def decode_fixed_part(config: T5Config, params: Any, input_ids, attention_mask=None, *,
                      max_decode_len: int, layer_layout: str = "auto",
                      mesh: Optional[DecodeMesh] = None) -> Any:
  """[B] float32: runs what every `generate` call on these inputs runs before its first
  token (the encoder and each layer's cross-attention K/V, early_exit.fixed_part_impl),
  compiled and placed as `generate` would, and nothing else. Timed beside whole decodes, it
  is the part of their time that no exit rule can shorten (modes/evaluate.py)."""
  plan = DecodePlan.checked(config, ExitConfig(), SamplingConfig(), max_decode_len, False)
  check_layout(layer_layout)
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, None)
  params = _layout_params(params, layer_layout, mesh)
  constants = _constants(plan, params, ExitConfig(), np.float32(1.0), None)
  rng = _default_rng()
  if not _spans_devices(mesh):
    return _fixed_part_jit(plan, constants, input_ids, attention_mask, rng)
  return decode_on_mesh(fixed_part_impl, plan, constants, input_ids, attention_mask, rng,
                        None, mesh)


def check_threshold_grid(thresholds) -> np.ndarray:
  """Thresholds as float32 [K]: a non-empty 1-D list of finite values >= 0; values that
  are not numbers (strings, None) are a TypeError, not converted."""
  given = np.asarray(thresholds)
  if given.size and not (np.issubdtype(given.dtype, np.integer)
                         or np.issubdtype(given.dtype, np.floating)):
    raise TypeError(f"thresholds must be real numbers, got {given.dtype} values "
                    f"{given.ravel()[:3].tolist()!r}")
  thresholds = given.astype(np.float32)
  if thresholds.ndim != 1 or thresholds.size < 1:
    raise ValueError(f"thresholds must be a non-empty 1-D list, got shape {thresholds.shape}")
  bad = np.flatnonzero(~np.isfinite(thresholds) | (thresholds < 0))
  if bad.size:
    raise ValueError(f"thresholds must be finite and >= 0; thresholds[{bad[0]}] = "
                     f"{float(thresholds[bad[0]])!r}")
  return thresholds


def generate_with_thresholds(config: T5Config, params: Any, input_ids, attention_mask=None, *,
                             thresholds: Sequence[float], exit: ExitConfig = ExitConfig(),  # pylint: disable=redefined-builtin
                             max_decode_len: int, return_trace: bool = False,
                             max_input_len: Optional[int] = None,
                             skip_rows=None, classifier_params: Any = None,
                             layer_layout: str = "auto",
                             mesh: Optional[DecodeMesh] = None) -> GenerateOutput:
  """Greedy `generate` where example b uses its own threshold thresholds[b] ([B]).

  Each row equals decoding that example alone at its threshold (batch invariance), so
  (example, threshold) pairs from a grid can be packed into one batch. Rows where
  `skip_rows` [B] is True are padding: they are not decoded and return pad tokens with exit
  layer 0. `mesh`: as for `generate`.
  """
  thresholds = check_threshold_grid(thresholds)
  plan = DecodePlan.checked(config, exit, SamplingConfig(), max_decode_len, return_trace)
  check_layout(layer_layout)
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, max_input_len)
  if thresholds.size != input_ids.shape[0]:
    raise ValueError(f"thresholds has {thresholds.size} entries but the batch has "
                     f"{input_ids.shape[0]} examples; give one threshold per example")
  skip = np.zeros(input_ids.shape[0], bool) if skip_rows is None else np.asarray(skip_rows)
  if skip.shape != (input_ids.shape[0],) or skip.dtype != bool:
    raise ValueError(f"skip_rows must be a bool array [{input_ids.shape[0]}], got "
                     f"{skip.dtype} {skip.shape}")
  params = _layout_params(params, layer_layout, mesh)
  constants = _constants(plan, params, exit, jnp.asarray(thresholds), classifier_params)
  return _decode(plan.for_thresholds(thresholds[~skip]), constants, input_ids, attention_mask,
                 _default_rng(), jnp.asarray(skip), mesh)


def generate_grid(config: T5Config, params: Any, input_ids, attention_mask=None, *,
                  thresholds: Sequence[float], exit: ExitConfig = ExitConfig(),  # pylint: disable=redefined-builtin
                  max_decode_len: int, sampling: SamplingConfig = SamplingConfig(),
                  rng: Optional[jax.Array] = None, return_trace: bool = False,
                  max_input_len: Optional[int] = None,
                  classifier_params: Any = None) -> GenerateOutput:
  """`generate` under K thresholds in one compiled call: every field gets a leading [K]."""
  thresholds = check_threshold_grid(thresholds)
  plan = DecodePlan.checked(config, exit, sampling, max_decode_len, return_trace)
  rng = _check_rng(sampling, rng)
  input_ids, attention_mask = prepare_inputs(config, input_ids, attention_mask, max_input_len)
  params = decoding_params(params, "stacked")
  constants = _constants(plan, params, exit, jnp.asarray(thresholds), classifier_params)
  return _generate_grid_jit(plan, constants, input_ids, attention_mask, rng)
