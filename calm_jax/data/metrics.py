"""Text metrics: per-example similarities in [0, 1] and corpus scores in [0, 100].

Each per-example similarity takes one prediction and one or more references and returns
the best match over the references, clipped to [0, 1]; calibration turns them into losses.
The corpus functions take parallel lists of predictions and references and report on the
0-100 scale papers use (and seqio metric functions return). ROUGE comes from rouge-score
(Porter stemming; ROUGE-Lsum treats each line as a sentence), BLEU/chrF from sacrebleu;
SQuAD's answer normalisation is applied before exact match and token F1.
NumPy-free and JAX-free, so calibration can call these per example.
"""

from __future__ import annotations

import collections
import functools
import re
import string
from typing import Callable, Dict, List, Sequence, Union

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


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@functools.lru_cache(maxsize=8)
def _rouge_scorer(*kinds: str) -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)


def _rouge_f(kind: str, prediction: str, references: References) -> float:
  scores = _rouge_scorer(kind).score_multi(_as_references(references),
                                           _check_prediction(prediction))
  return _clip(scores[kind].fmeasure)


def rouge_scores(prediction: str, references: References) -> Dict[str, float]:
  """{rouge1, rouge2, rougeL, rougeLsum} F-measures (rouge-score, Porter stemming), each the
  best over the references. ROUGE-Lsum splits both texts into sentences at newlines."""
  scores = _rouge_scorer(*ROUGE_TYPES).score_multi(_as_references(references),
                                                   _check_prediction(prediction))
  return {kind: _clip(scores[kind].fmeasure) for kind in ROUGE_TYPES}


def rouge_1(prediction: str, references: References) -> float:
  """ROUGE-1 (unigram) F-measure with Porter stemming, the best over the references."""
  return _rouge_f("rouge1", prediction, references)


def rouge_2(prediction: str, references: References) -> float:
  """ROUGE-2 (bigram) F-measure with Porter stemming, the best over the references."""
  return _rouge_f("rouge2", prediction, references)


def rouge_l(prediction: str, references: References) -> float:
  """ROUGE-L F-measure with Porter stemming (rouge-score), the best over the references."""
  return _rouge_f("rougeL", prediction, references)


def rouge_lsum(prediction: str, references: References) -> float:
  """ROUGE-Lsum F-measure with Porter stemming: the union LCS over sentences, one sentence
  per line (split multi-sentence outputs at newlines first), the best over the references."""
  return _rouge_f("rougeLsum", prediction, references)


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


def exact_string_match(prediction: str, references: References) -> float:
  """1.0 when the prediction equals some reference character for character, else 0.0
  (no normalisation: for generated tasks where every byte counts)."""
  prediction = _check_prediction(prediction)
  return float(any(prediction == reference for reference in _as_references(references)))


TEXT_SIMILARITIES: Dict[str, Callable[[str, References], float]] = {
    "rouge_l": rouge_l,
    "token_f1": token_f1,
    "exact_match": exact_match,
    "bleu": sentence_bleu,
    "chrf": sentence_chrf,
    "rouge_1": rouge_1,
    "rouge_2": rouge_2,
    "rouge_lsum": rouge_lsum,
    "string_match": exact_string_match,
}


def get_text_similarity(name: str) -> Callable[[str, References], float]:
  """The similarity function registered under `name`."""
  if not isinstance(name, str) or name not in TEXT_SIMILARITIES:
    raise ValueError(f"similarity={name!r} is not a text similarity; allowed: "
                     f"{', '.join(TEXT_SIMILARITIES)} (or 'token_agreement' on token ids)")
  return TEXT_SIMILARITIES[name]


# --- corpus scores, 0-100 -----------------------------------------------------------------


def _check_corpus(predictions: Sequence[str],
                  references: Sequence[References]) -> List[List[str]]:
  """Checked predictions and per-example reference lists of the same length."""
  if isinstance(predictions, str) or not isinstance(predictions, (list, tuple)):
    raise ValueError(f"predictions must be a list of strings; got "
                     f"{type(predictions).__name__} {predictions!r:.60}")
  if isinstance(references, str) or not isinstance(references, (list, tuple)):
    raise ValueError(f"references must be a list with one entry per prediction; got "
                     f"{type(references).__name__} {references!r:.60}")
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references: "
                     "each prediction needs its references")
  if not predictions:
    raise ValueError("predictions is empty: a corpus score needs at least one example")
  for prediction in predictions:
    _check_prediction(prediction)
  return [_as_references(refs) for refs in references]


def _mean_percent(values: Sequence[float]) -> float:
  return 100.0 * sum(values) / len(values)


def corpus_rouge(predictions: Sequence[str],
                 references: Sequence[References]) -> Dict[str, float]:
  """Mean per-example {rouge1, rouge2, rougeL, rougeLsum} F-measures (best reference each),
  times 100."""
  refs = _check_corpus(predictions, references)
  per_example = [rouge_scores(p, r) for p, r in zip(predictions, refs)]
  return {kind: _mean_percent([s[kind] for s in per_example]) for kind in ROUGE_TYPES}


def _reference_streams(refs: List[List[str]]) -> List[List[Union[str, None]]]:
  """Per-example reference lists -> sacrebleu's reference streams ([k][n]), padded with
  None where an example has fewer than k references."""
  count = max(len(r) for r in refs)
  return [[r[i] if i < len(r) else None for r in refs] for i in range(count)]


def corpus_bleu(predictions: Sequence[str], references: Sequence[References]) -> float:
  """sacrebleu's corpus BLEU (13a tokenisation, exp smoothing) against every reference,
  0-100."""
  refs = _check_corpus(predictions, references)
  return float(sacrebleu.corpus_bleu(list(predictions), _reference_streams(refs)).score)


def corpus_chrf(predictions: Sequence[str], references: Sequence[References]) -> float:
  """sacrebleu's corpus chrF against every reference, 0-100."""
  refs = _check_corpus(predictions, references)
  return float(sacrebleu.corpus_chrf(list(predictions), _reference_streams(refs)).score)


def squad(predictions: Sequence[str], references: Sequence[References]) -> Dict[str, float]:
  """SQuAD's exact match and token F1 (normalised answers, best reference per example),
  averaged and times 100, as the official evaluation script reports them."""
  refs = _check_corpus(predictions, references)
  return {"exact_match": _mean_percent([exact_match(p, r) for p, r in zip(predictions, refs)]),
          "f1": _mean_percent([token_f1(p, r) for p, r in zip(predictions, refs)])}


def accuracy(predictions: Sequence[str], references: Sequence[References]) -> float:
  """Percentage of predictions equal to one of their references character for character."""
  refs = _check_corpus(predictions, references)
  return _mean_percent([exact_string_match(p, r) for p, r in zip(predictions, refs)])


CorpusMetric = Callable[[Sequence[str], Sequence[References]], Dict[str, float]]

CORPUS_METRICS: Dict[str, CorpusMetric] = {
    "rouge": corpus_rouge,
    "bleu": lambda predictions, references: {"bleu": corpus_bleu(predictions, references)},
    "chrf": lambda predictions, references: {"chrf": corpus_chrf(predictions, references)},
    "squad": squad,
    "accuracy": lambda predictions, references: {"accuracy": accuracy(predictions,
                                                                      references)},
}


def evaluate(metric_names: Sequence[str], predictions: Sequence[str],
             references: Sequence[References]) -> Dict[str, float]:
  """Every named corpus metric (names of CORPUS_METRICS) merged into one {name: score}."""
  if isinstance(metric_names, str):
    metric_names = (metric_names,)
  unknown = [name for name in metric_names if name not in CORPUS_METRICS]
  if unknown:
    raise ValueError(f"metrics {unknown!r} are not corpus metrics; allowed: "
                     f"{', '.join(CORPUS_METRICS)}")
  scores: Dict[str, float] = {}
  for name in metric_names:
    scores.update(CORPUS_METRICS[name](predictions, references))
  return scores
