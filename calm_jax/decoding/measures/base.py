"""The measure interface: what a confidence measure is, what it may read, what it declares.

A measure is a small frozen object built once per decode from the `ExitConfig`, with its
options bound as fields. It sees one decoder layer's output for the current token of every
row and returns a confidence per row, carrying its own small state across the layers of
that token. It exposes four methods, and declares what it needs in one `Needs` value that
the decoder reads in one place (`decoding.plan.DecodePlan`):

- `validate(model_config)`: ValueError naming a bad option, before anything is compiled.
- `init(context, embedded)`: its state before layer 1 (embedded decoder input [B, d]).
- `confidence(context, inputs, state)`: (confidence [B] float32, new state).
- `token_logits(state)`: the logits the token is chosen from when it exits here, or None
  for the exit head's.

A measure that looks at earlier positions (the attention classifier) also has a
`PositionStore`: the store itself lives in the decoder's token loop state, leaves
[L, B, ...]; during a position it is only read (each layer's slice arrives in
`LayerInputs.memory`), and what the position leaves at each layer is written once after
the layer loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Tuple

import flax
import jax
import jax.numpy as jnp

from calm_jax.model.config import T5Config

Array = jnp.ndarray

LOGITS = ("none", "full", "subset")


@dataclasses.dataclass(frozen=True)
class Needs:
  """What a measure needs from the decoder."""

  # 'none': hidden states only. 'full': the exit head's logits [B, V] at every check
  # (reused for the emitted token). 'subset': the measure scores its own K token ids: its
  # state holds `ids` and `logits`, both [B, K]; an early exit emits the best of those
  # (mapped back to its id), a token that runs all L layers the full head's.
  logits: str = "none"
  subset_width: int = 0  # K, with logits='subset'
  final_top1: bool = False  # the final layer's top-1 (a full pass first: the oracle)
  every_layer: bool = False  # checked at every layer, not only at exit points
  # The state carries information across exit points, so the measure runs at every exit
  # point, also where no exit can happen (lambda >= 1).
  every_exit_point: bool = False
  # Exit where confidence >= lambda_t; otherwise the measure decides alone (exit where
  # confidence >= 1) and the threshold plays no part.
  thresholded: bool = True


@flax.struct.dataclass
class MeasureContext:
  """What a measure may read that is constant over one decode."""

  params: Any  # the model's parameters
  classifier_params: Any = None  # a learned measure's parameters
  # [V, d] the head's rows, for the subset measures (built once per decode; None: built on
  # use from params)
  head_table: Optional[Array] = None
  model_config: T5Config = flax.struct.field(pytree_node=False, default=None)


@flax.struct.dataclass
class LayerInputs:
  """What a measure may read at one layer of one token, for R rows."""

  layer: Array  # [] int32, 1-based number of the layer just computed
  hidden: Array  # [R, d] that layer's output
  logits: Optional[Array] = None  # [R, V] float32 exit-head logits (Needs.logits='full')
  final_top1: Optional[Array] = None  # [R] int32 final layer's top-1 (Needs.final_top1)
  position: Optional[Array] = None  # [] int32, the output position
  memory: Any = ()  # this layer's slice of the position store, leaves [R, ...]
  # `layer` as a Python int where the caller knows it statically (the unrolled layer loop),
  # so a measure may shape its work by it; None where the layer is traced.
  static_layer: Optional[int] = flax.struct.field(pytree_node=False, default=None)


class PositionStore:
  """A store of earlier positions' entries, leaves [L, B, ...], kept by the decoder."""

  def init(self, context: MeasureContext, batch: int, max_decode_len: int) -> Any:
    """The empty store, leaves [L, B, ...]."""
    raise NotImplementedError

  def entry(self, context: MeasureContext, hidden: Array) -> Any:
    """What states hidden [B, d] leave at one layer, leaves [B, ...]."""
    raise NotImplementedError

  def write(self, store: Any, entries: Any, position: Array) -> Any:
    """The store holding entries (leaves [L, B, ...]) at `position` of every layer."""
    raise NotImplementedError

  def empty_entries(self, context: MeasureContext, hidden: Array) -> Any:
    """Zero entries [L, B, ...] for a new position (states hidden [B, d] give shapes)."""
    entry = jax.eval_shape(self.entry, context, hidden)
    num_layers = context.model_config.num_decoder_layers
    return jax.tree.map(lambda one: jnp.zeros((num_layers,) + one.shape, one.dtype), entry)


class Measure:
  """Base of every confidence measure; subclasses are frozen dataclasses of options."""

  name: ClassVar[str] = ""
  needs: Needs = Needs()
  store: Optional[PositionStore] = None

  def validate(self, model_config: T5Config) -> None:
    """ValueError naming a bad option (the model gives the layer count and vocabulary)."""
    del model_config

  def init(self, context: MeasureContext, embedded: Array) -> Any:
    """The state before layer 1."""
    del context, embedded
    return ()

  def confidence(self, context: MeasureContext, inputs: LayerInputs,
                 state: Any) -> Tuple[Array, Any]:
    raise NotImplementedError

  def token_logits(self, state: Any) -> Optional[Array]:
    """Logits [B, K or V] the token is chosen from at an exit, or None for the head's."""
    del state
    return None


def top2_probabilities(logits: Array) -> Tuple[Array, Array]:
  """The two largest softmax probabilities [B] each (equal when the top logit is tied).

  Two max reductions instead of `lax.top_k`, which XLA lowers to a sort on CPU (about 10x
  slower over a vocabulary).
  """
  logits = logits.astype(jnp.float32)
  log_normaliser = jax.nn.logsumexp(logits, axis=-1)  # [B]
  first = jnp.max(logits, axis=-1)  # [B]
  top_index = jnp.argmax(logits, axis=-1)  # [B]
  is_top = jnp.arange(logits.shape[-1]) == top_index[:, None]  # [B, V]
  second = jnp.max(jnp.where(is_top, -jnp.inf, logits), axis=-1)  # [B]
  return jnp.exp(first - log_normaliser), jnp.exp(second - log_normaliser)
