"""Per-example text similarities in [0, 1], for calibration losses and reports.

Each similarity takes one prediction and one or more references and returns the best match
over the references, clipped to [0, 1]. ROUGE comes from rouge-score and BLEU/chrF from
sacrebleu; SQuAD's answer normalisation is applied before exact match and token F1.
NumPy-free and JAX-free, so calibration can call these per example.
"""

from __future__ import annotations

import collections
import functools
import re
import string
from typing import Callable, Dict, Sequence, Union

import sacrebleu
from rouge_score import rouge_scorer

References = Union[str, Sequence[str]]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def _as_references(references: References) -> list:
  if isinstance(references, str):
    return [references]
  if isinstance(references, bytes) or not isinstance(references, (list, tuple)):
    raise ValueError(f"references must be a string or a list of strings; got "
                     f"{type(references).__name__} {references!r:.60}")
  refs = list(references)
  if not refs:
    raise ValueError("references is empty: each example needs at least one reference")
  for ref in refs:
    if not isinstance(ref, str):
      raise ValueError(f"references must be strings; got {type(ref).__name__} {ref!r}")
  return refs


def _check_prediction(prediction) -> str:
  if not isinstance(prediction, str):
    raise ValueError(f"prediction must be a string; got {type(prediction).__name__} "
                     f"{prediction!r}")
  return prediction


def _clip(value: float) -> float:
  return min(1.0, max(0.0, float(value)))


def normalize_answer(text: str) -> str:
  """SQuAD's normalisation: lower case, drop punctuation and the articles a/an/the, and
  collapse whitespace."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: References) -> float:
  """1.0 when the normalised prediction equals some normalised reference, else 0.0."""
  prediction = normalize_answer(_check_prediction(prediction))
  return float(any(prediction == normalize_answer(r) for r in _as_references(references)))


def _token_f1_single(prediction_tokens: list, reference_tokens: list) -> float:
  if not prediction_tokens or not reference_tokens:
    # An empty answer matches only an empty answer (SQuAD 2.0's convention).
    return float(prediction_tokens == reference_tokens)
  common = collections.Counter(prediction_tokens) & collections.Counter(reference_tokens)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision = overlap / len(prediction_tokens)
  recall = overlap / len(reference_tokens)
  return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: References) -> float:
  """SQuAD token F1 on normalised answers, maximised over the references."""
  tokens = normalize_answer(_check_prediction(prediction)).split()
  return max(_token_f1_single(tokens, normalize_answer(r).split())
             for r in _as_references(references))


@functools.lru_cache(maxsize=4)
def _rouge_scorer(kind: str) -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def rouge_l(prediction: str, references: References) -> float:
  """ROUGE-L F-measure with Porter stemming (rouge-score), the best over the references."""
  scores = _rouge_scorer("rougeL").score_multi(_as_references(references),
                                                _check_prediction(prediction))
  return _clip(scores["rougeL"].fmeasure)


def sentence_bleu(prediction: str, references: References) -> float:
  """sacrebleu's smoothed sentence-level BLEU against all references, scaled to [0, 1]."""
  score = sacrebleu.sentence_bleu(_check_prediction(prediction), _as_references(references))
  return _clip(score.score / 100.0)


def sentence_chrf(prediction: str, references: References) -> float:
  """sacrebleu's sentence-level chrF against all references, scaled to [0, 1]."""
  score = sacrebleu.sentence_chrf(_check_prediction(prediction), _as_references(references))
  return _clip(score.score / 100.0)


def token_agreement(prediction: Sequence[int], reference: Sequence[int]) -> float:
  """Fraction of positions where two token sequences agree, over the longer length (a
  missing position disagrees); 1.0 for two empty sequences."""
  longest = max(len(prediction), len(reference))
  if longest == 0:
    return 1.0
  same = sum(int(a == b) for a, b in zip(prediction, reference))
  return same / longest


TEXT_SIMILARITIES: Dict[str, Callable[[str, References], float]] = {
    "rouge_l": rouge_l,
    "token_f1": token_f1,
    "exact_match": exact_match,
    "bleu": sentence_bleu,
    "chrf": sentence_chrf,
}


def get_text_similarity(name: str) -> Callable[[str, References], float]:
  """The similarity function registered under `name`."""
  if not isinstance(name, str) or name not in TEXT_SIMILARITIES:
    raise ValueError(f"similarity={name!r} is not a text similarity; allowed: "
                     f"{', '.join(TEXT_SIMILARITIES)} (or 'token_agreement' on token ids)")
  return TEXT_SIMILARITIES[name]
