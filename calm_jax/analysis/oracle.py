"""Study 6: the local oracle, CALM's upper bound on what any confidence measure can achieve.

The oracle exits every token at the first layer whose top-1 equals the final layer's. With
propagated state (the skipped layers' K/V come from the exit state) the final layer it is
compared with already sees propagated states of earlier tokens, so its outputs can drift
from the full model's; with the true cache (every layer computed) its outputs are the full
model's. Both are free-running decodes: each reads its own outputs. The study reports, per
decode, the average exit layer and the quality against the full model and the references.
NumPy and matplotlib only.
"""

from __future__ import annotations

import dataclasses
from typing import List, Mapping, Sequence

import numpy as np

from calm_jax.analysis import plots
from calm_jax.data import metrics

TITLE = "Local oracle (first layer agreeing with the final one), free-running decoding"
DESCRIPTION = (
    "Free-running decodes (each reads its own outputs); the oracle exits only at the exit "
    "points of the run's exit settings (min_exit_layer, exit_interval; layer L always). "
    "mean_exit_layer: decoder layers run per generated token (EOS included); "
    "layer_speedup = L / mean_exit_layer; "
    "token_agreement: mean over examples of the fraction of positions equal to the full "
    "model's output (over the longer of the two); same_as_full_fraction: outputs identical to "
    "the full model's; reference_quality: mean similarity of the output text with the "
    "reference, by the named similarity.")
DECODES = {
    "full": "full model (every token runs all layers)",
    "oracle_copy_state": "local oracle, skipped layers' K/V propagated from the exit state",
    "oracle_full_compute": "local oracle, true cache (every layer computed for every token)",
}


@dataclasses.dataclass(frozen=True)
class DecodedOutputs:
  """What one decode returned for a batch."""

  name: str  # a key of DECODES
  tokens: np.ndarray  # [B, T] emitted ids, pad after EOS
  exit_layers: np.ndarray  # [B, T] layers run per token (1..L), 0 after EOS
  texts: List[str]  # [B] the outputs as text

  def generated_ids(self) -> List[List[int]]:
    """Per example, the ids up to and including EOS."""
    return [row[layers > 0].tolist() for row, layers in zip(self.tokens, self.exit_layers)]


@dataclasses.dataclass(frozen=True)
class OracleRow:
  """One decode's figures."""

  name: str
  description: str
  num_tokens: int  # generated tokens, EOS included
  mean_exit_layer: float
  layer_speedup: float  # L / mean_exit_layer
  token_agreement: float  # with the full model's output
  same_as_full_fraction: float
  reference_quality: float  # similarity with the reference text


@dataclasses.dataclass(frozen=True)
class OracleResult:
  num_examples: int
  num_layers: int
  similarity: str  # the similarity behind reference_quality
  rows: List[OracleRow]  # the full model first


def _check(decoded: DecodedOutputs, shape, num_layers: int) -> None:
  if decoded.name not in DECODES:
    raise ValueError(f"decode name {decoded.name!r}; allowed: {', '.join(DECODES)}")
  if decoded.tokens.shape != shape or decoded.exit_layers.shape != shape:
    raise ValueError(f"{decoded.name}: tokens {decoded.tokens.shape} and exit layers "
                     f"{decoded.exit_layers.shape} must both be {shape}")
  if len(decoded.texts) != shape[0]:
    raise ValueError(f"{decoded.name}: {len(decoded.texts)} texts for {shape[0]} examples")
  layers = np.asarray(decoded.exit_layers)
  if layers.min() < 0 or layers.max() > num_layers:
    raise ValueError(f"{decoded.name}: exit layers must lie in 0..{num_layers}, found "
                     f"{layers.min()}..{layers.max()}")


def _row(decoded: DecodedOutputs, full: DecodedOutputs, references: Sequence[str],
         similarity: str, num_layers: int) -> OracleRow:
  layers = np.asarray(decoded.exit_layers)
  generated = layers > 0
  mean_layer = float(layers[generated].mean()) if generated.any() else float(num_layers)
  score = metrics.get_text_similarity(similarity)
  ids, full_ids = decoded.generated_ids(), full.generated_ids()
  return OracleRow(
      name=decoded.name, description=DECODES[decoded.name],
      num_tokens=int(generated.sum()), mean_exit_layer=mean_layer,
      layer_speedup=num_layers / mean_layer,
      token_agreement=float(np.mean([metrics.token_agreement(a, b)
                                     for a, b in zip(ids, full_ids)])),
      same_as_full_fraction=float(np.mean([a == b for a, b in zip(ids, full_ids)])),
      reference_quality=float(np.mean([score(text, ref) for text, ref in
                                       zip(decoded.texts, references)])))


def oracle_study(full: DecodedOutputs, oracles: Sequence[DecodedOutputs],
                 references: Sequence[str], *, num_layers: int,
                 similarity: str) -> OracleResult:
  """Figures of the full decode and every oracle decode, all over the same examples."""
  shape = np.asarray(full.tokens).shape
  for decoded in (full, *oracles):
    _check(decoded, shape, num_layers)
  if len(references) != shape[0]:
    raise ValueError(f"{len(references)} references for {shape[0]} examples")
  rows = [_row(d, full, references, similarity, num_layers) for d in (full, *oracles)]
  return OracleResult(num_examples=shape[0], num_layers=num_layers, similarity=similarity,
                      rows=rows)


def figure(results: Mapping[str, OracleResult]):
  """Three panels with one group of bars per model and one bar per decode: average exit
  layer, token agreement with the full model, and quality against the references."""
  fig, axes = plots.figure_grid(1, 3)
  models = list(results)
  names = [row.name for row in next(iter(results.values())).rows]
  width = 0.8 / len(names)
  deepest = max(r.num_layers for r in results.values())
  panels = (("mean_exit_layer", "average exit layer", "Decoder layers per token", deepest),
            ("token_agreement", "token agreement with the full model",
             "Agreement with the full model's output", 1.0),
            ("reference_quality", None, "Quality against the references", 1.0))
  for axis, (field, ylabel, title, top) in zip(axes[0], panels):
    for index, name in enumerate(names):
      values = [getattr(next(r for r in results[m].rows if r.name == name), field)
                for m in models]
      axis.bar(np.arange(len(models)) + width * (index - (len(names) - 1) / 2), values,
               width, color=plots.color(index), label=DECODES[name])
    similarity = next(iter(results.values())).similarity
    axis.set_xticks(np.arange(len(models)), models)
    axis.set(title=title, xlabel="model", ylim=(0, top * 1.05),
             ylabel=ylabel or f"mean {similarity} with the reference")
  plots.finish(fig, TITLE, axes[0])
  return fig
