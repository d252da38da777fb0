"""Text metrics: per-example ROUGE-1/2/L/Lsum, BLEU and chrF and the corpus scores against
direct calls of rouge-score and sacrebleu, SQuAD normalisation, exact match and token F1 on
hand-computed cases, token agreement on id lists, and the input checks."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from calm_jax.data import metrics
from calm_jax.data.metrics import (exact_match, get_text_similarity, normalize_answer,
                                   rouge_l, sentence_bleu, sentence_chrf, token_agreement,
                                   token_f1)

# (prediction, reference) pairs with partial, full and no overlap.
PAIRS = [
    ("the cat sat on the mat", "a cat was sitting on the mat"),
    ("the quick brown fox jumps over the lazy dog", "a quick brown dog jumps over a lazy fox"),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("hello world", "goodbye moon"),
    ("running cats", "run cat"),
    ("It was 42 degrees in the shade", "it was forty-two degrees in the shade"),
    ("x", "the rain in spain falls mainly on the plain"),
]

# (prediction, references) with several references each.
MULTI = [
    ("the cat sat on the mat", ["a dog ran", "the cat is on a mat", "cat sat mat"]),
    ("the quick brown fox", ["slow green turtle", "the quick red fox", "a quick brown fox"]),
    ("Paris is the capital of France.", ["Berlin is in Germany.",
                                         "The capital of France is Paris.",
                                         "France's capital city is Paris."]),
]

IDENTICAL = [
    "the quick brown fox jumps over the lazy dog",
    "Paris is the capital of France.",
    "a b c d e",
    "hello",
]


def _rouge_ref(prediction, reference):
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  return scorer.score(reference, prediction)["rougeL"].fmeasure


# --- ROUGE-L ----------------------------------------------------------------------------


@pytest.mark.parametrize("prediction,reference", PAIRS)
def test_rouge_l_matches_rouge_score(prediction, reference):
  expected = _rouge_ref(prediction, reference)
  assert rouge_l(prediction, reference) == expected
  assert rouge_l(prediction, [reference]) == expected


def test_rouge_l_hand_computed():
  # LCS("the cat sat", "the cat") = 2: precision 2/3, recall 2/2, F = 2PR / (P + R) = 0.8.
  assert rouge_l("the cat sat", "the cat") == pytest.approx(0.8, abs=1e-12)
  # LCS of "a b c d" and "a c b d" is 3 (e.g. a b d): P = R = 3/4.
  assert rouge_l("a b c d", "a c b d") == pytest.approx(0.75, abs=1e-12)
  assert rouge_l("hello world", "goodbye moon") == 0.0


def test_rouge_l_uses_stemming():
  # Porter stemming maps "running" -> "run" and "cats" -> "cat"; without it nothing matches.
  assert rouge_l("running cats", "run cat") == 1.0
  unstemmed = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  assert unstemmed.score("run cat", "running cats")["rougeL"].fmeasure == 0.0


@pytest.mark.parametrize("prediction,references", MULTI)
def test_rouge_l_multiple_references_is_max(prediction, references):
  per_reference = [_rouge_ref(prediction, ref) for ref in references]
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  multi = scorer.score_multi(references, prediction)["rougeL"].fmeasure
  assert rouge_l(prediction, references) == max(per_reference) == multi
  # The best reference is not the first one, so "first reference only" would differ.
  assert per_reference[0] < max(per_reference)
  assert rouge_l(prediction, references) != rouge_l(prediction, references[0])


@pytest.mark.parametrize("text", IDENTICAL)
def test_rouge_l_identical_is_one(text):
  assert rouge_l(text, text) == 1.0


# --- BLEU and chrF ----------------------------------------------------------------------


@pytest.mark.parametrize("ours, theirs", [(sentence_bleu, sacrebleu.sentence_bleu),
                                          (sentence_chrf, sacrebleu.sentence_chrf)],
                         ids=["bleu", "chrf"])
@pytest.mark.parametrize("prediction,reference", PAIRS)
def test_sentence_scores_match_sacrebleu(ours, theirs, prediction, reference):
  expected = theirs(prediction, [reference]).score / 100
  assert ours(prediction, reference) == expected
  assert ours(prediction, [reference]) == expected
  assert 0.0 <= ours(prediction, reference) <= 1.0


@pytest.mark.parametrize("prediction,references", MULTI)
def test_bleu_and_chrf_multiple_references(prediction, references):
  bleu = sacrebleu.sentence_bleu(prediction, references).score / 100
  chrf = sacrebleu.sentence_chrf(prediction, references).score / 100
  assert sentence_bleu(prediction, references) == bleu
  assert sentence_chrf(prediction, references) == chrf
  # All references are used, not just the first one.
  assert bleu != sacrebleu.sentence_bleu(prediction, references[:1]).score / 100
  assert chrf != sacrebleu.sentence_chrf(prediction, references[:1]).score / 100
  assert 0.0 <= sentence_bleu(prediction, references) <= 1.0
  assert 0.0 <= sentence_chrf(prediction, references) <= 1.0


@pytest.mark.parametrize("text", IDENTICAL)
def test_bleu_and_chrf_identical_are_exactly_one(text):
  # sacrebleu's BLEU comes out a hair above 100 (100.00000000000004); the module clips it.
  assert sacrebleu.sentence_bleu(text, [text]).score >= 100.0
  assert sentence_bleu(text, text) == 1.0
  assert sentence_bleu(text, [text, "something else entirely"]) == 1.0
  assert sentence_chrf(text, text) == 1.0


def test_bleu_and_chrf_disjoint():
  assert sentence_chrf("abc", "xyz") == 0.0
  assert sentence_bleu("abc", "xyz") == sacrebleu.sentence_bleu("abc", ["xyz"]).score / 100
  assert 0.0 <= sentence_bleu("abc", "xyz") < 0.05


# --- SQuAD normalisation, exact match and token F1 --------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("The Cat", "cat"),
    ("  Hello\tWorld\n ", "hello world"),
    ("An apple, a day.", "apple day"),
    ("the THE The tHe", ""),
    ("A", ""),
    ("", ""),
    ("theatre anna another", "theatre anna another"),  # articles only as whole words
    ("don't stop!!!", "dont stop"),
    ("a-b c_d (e) [f]", "ab cd e f"),
    ("the-end", "theend"),  # punctuation goes before articles, as in SQuAD
    ("Hello,world", "helloworld"),
    ("1,000.5 dollars", "10005 dollars"),
])
def test_normalize_answer(text, expected):
  assert normalize_answer(text) == expected


def test_exact_match():
  assert exact_match("The Cat.", "cat") == 1.0
  assert exact_match("  the   CAT ", "a cat!") == 1.0
  assert exact_match("cats", "cat") == 0.0
  assert exact_match("the cat sat", "cat") == 0.0
  assert exact_match("cat", ["dog", "a cat", "bird"]) == 1.0
  assert exact_match("cat", ["dog", "bird"]) == 0.0
  assert exact_match("", "") == 1.0
  assert exact_match("the", "") == 1.0  # both normalise to ""
  assert exact_match("", "cat") == 0.0
  assert exact_match("cat", "") == 0.0
  assert isinstance(exact_match("cat", "cat"), float)


def test_token_f1_partial_overlap_by_hand():
  # "cat sat on mat" (4 tokens) vs "cat on mat" (3 tokens): overlap 3, precision 3/4,
  # recall 1, F1 = 2 * 3/4 / (7/4) = 6/7.
  assert normalize_answer("the cat sat on the mat") == "cat sat on mat"
  assert normalize_answer("a cat on a mat") == "cat on mat"
  assert token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7,
                                                                                abs=1e-12)
  # "quick brown fox" vs "brown dog": overlap 1, P = 1/3, R = 1/2, F1 = 2/5.
  assert token_f1("The quick, brown fox!", "a brown dog") == pytest.approx(0.4, abs=1e-12)
  assert token_f1("hello world", "goodbye moon") == 0.0
  assert token_f1("The Cat!", "cat") == 1.0
  # Word order does not matter.
  assert token_f1("mat on cat", "cat on mat") == 1.0


def test_token_f1_counts_multiplicity():
  # Counter intersection: "cat cat cat" & "cat dog" = {cat: 1}; P = 1/3, R = 1/2 -> 2/5.
  assert token_f1("cat cat cat", "cat dog") == pytest.approx(0.4, abs=1e-12)
  # {cat: 2} & {cat: 3} = {cat: 2}; P = 2/3 (of 3 tokens), R = 2/3 -> 2/3.
  assert token_f1("cat cat dog", "cat cat cat") == pytest.approx(2 / 3, abs=1e-12)
  # A set-based overlap would give 1.0 here.
  assert token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5, abs=1e-12)


def test_token_f1_max_over_references():
  assert token_f1("cat sat", ["dog", "cat", "cat sat"]) == 1.0
  # Best is "cat": P = 1/2, R = 1 -> 2/3; "cat cat cat mouse" gives P = 1/2, R = 1/4 -> 1/3.
  assert token_f1("cat sat", ["dog", "cat cat cat mouse", "cat"]) == pytest.approx(
      2 / 3, abs=1e-12)
  assert token_f1("cat sat", ["dog", "bird"]) == 0.0


def test_token_f1_empty_answers():
  assert token_f1("", "") == 1.0
  assert token_f1("a the", ".") == 1.0  # both normalise to no tokens
  assert token_f1("", "cat") == 0.0
  assert token_f1("cat", "") == 0.0
  assert token_f1("", ["cat", ""]) == 1.0
  assert token_f1("cat", ["", "dog"]) == 0.0


# --- token agreement --------------------------------------------------------------------


def test_token_agreement():
  assert token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
  assert token_agreement([], []) == 1.0
  assert token_agreement([], [1]) == 0.0
  assert token_agreement([1], []) == 0.0
  assert token_agreement([1, 2, 3], [1, 2]) == pytest.approx(2 / 3, abs=1e-12)
  assert token_agreement([1, 2], [1, 2, 3]) == pytest.approx(2 / 3, abs=1e-12)
  assert token_agreement([1, 5, 3, 7], [1, 2, 3, 4]) == 0.5
  assert token_agreement([1, 2, 3, 4, 5], [9, 2]) == pytest.approx(1 / 5, abs=1e-12)
  assert token_agreement((4, 4, 4), [4, 4, 4, 4]) == 0.75
  # Position-wise, not a bag of tokens: a shifted sequence disagrees everywhere.
  assert token_agreement([1, 2, 3], [0, 1, 2, 3]) == 0.0


# --- registry and input checks ----------------------------------------------------------


def test_get_text_similarity_returns_the_functions():
  assert get_text_similarity("rouge_l") is rouge_l
  assert get_text_similarity("token_f1") is token_f1
  assert get_text_similarity("exact_match") is exact_match
  assert get_text_similarity("bleu") is sentence_bleu
  assert get_text_similarity("chrf") is sentence_chrf
  assert get_text_similarity("rouge_1") is metrics.rouge_1
  assert get_text_similarity("rouge_2") is metrics.rouge_2
  assert get_text_similarity("rouge_lsum") is metrics.rouge_lsum
  assert get_text_similarity("string_match") is metrics.exact_string_match
  assert set(metrics.TEXT_SIMILARITIES) == {"rouge_l", "token_f1", "exact_match", "bleu",
                                            "chrf", "rouge_1", "rouge_2", "rouge_lsum",
                                            "string_match"}


def test_get_text_similarity_unknown_name():
  with pytest.raises(ValueError) as info:
    get_text_similarity("rougeL")
  message = str(info.value)
  assert "'rougeL'" in message
  for name in ("rouge_l", "token_f1", "exact_match", "bleu", "chrf", "token_agreement"):
    assert name in message
  with pytest.raises(ValueError, match="token_agreement"):
    get_text_similarity("token_agreement")  # not a text similarity


@pytest.mark.parametrize("name", sorted(metrics.TEXT_SIMILARITIES))
@pytest.mark.parametrize("prediction", [None, 3, ["the", "cat"], b"cat"])
def test_non_string_prediction(name, prediction):
  with pytest.raises(ValueError, match="prediction must be a string"):
    get_text_similarity(name)(prediction, "the cat")


@pytest.mark.parametrize("name", sorted(metrics.TEXT_SIMILARITIES))
def test_bad_references(name):
  fn = get_text_similarity(name)
  with pytest.raises(ValueError, match="references is empty"):
    fn("the cat", [])
  with pytest.raises(ValueError, match="references must be strings"):
    fn("the cat", ["the cat", 3])
  with pytest.raises(ValueError, match="references must be strings"):
    fn("the cat", [None])
  with pytest.raises(ValueError, match="references must be strings"):
    fn("the cat", [["the", "cat"]])


@pytest.mark.parametrize("references", [b"ab", 5, None])
def test_references_of_the_wrong_type_are_rejected(references):
  with pytest.raises(ValueError, match="references must be a string or a list of strings"):
    metrics.token_f1("a", references)


def test_get_text_similarity_rejects_a_non_string_name():
  with pytest.raises(ValueError, match=r"similarity=\['x'\] is not a text similarity"):
    metrics.get_text_similarity(["x"])


# --- ROUGE-1/2/Lsum -----------------------------------------------------------------------


ROUGE_FUNCTIONS = {"rouge1": metrics.rouge_1, "rouge2": metrics.rouge_2,
                   "rougeL": metrics.rouge_l, "rougeLsum": metrics.rouge_lsum}

# Summaries with several sentences, one per line (as CNN/DailyMail highlights are).
MULTILINE = [
    ("the cat sat on the mat\nit was happy", "it was happy\nthe cat sat on the mat"),
    ("police arrested two men.\nthe car was found in leeds.",
     "two men were arrested by police.\nthe stolen car was later found in leeds."),
    ("a storm hit the coast", "a storm hit the east coast\nthousands lost power"),
]


@pytest.mark.parametrize("kind", sorted(ROUGE_FUNCTIONS))
@pytest.mark.parametrize("prediction,reference", PAIRS + MULTILINE)
def test_rouge_types_match_rouge_score(kind, prediction, reference):
  scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
  expected = scorer.score(reference, prediction)[kind].fmeasure
  assert ROUGE_FUNCTIONS[kind](prediction, reference) == expected
  assert metrics.rouge_scores(prediction, reference)[kind] == expected


@pytest.mark.parametrize("prediction,references", MULTI)
def test_rouge_types_multiple_references_are_the_max(prediction, references):
  scorer = rouge_scorer.RougeScorer(list(metrics.ROUGE_TYPES), use_stemmer=True)
  scores = metrics.rouge_scores(prediction, references)
  for kind, fn in ROUGE_FUNCTIONS.items():
    best = max(scorer.score(ref, prediction)[kind].fmeasure for ref in references)
    assert fn(prediction, references) == scores[kind] == best


def test_rouge_lsum_splits_sentences_at_newlines():
  # Reference sentences "a b c" and "d e f" each match the prediction fully (union LCS 6 of
  # 6), while plain ROUGE-L finds an LCS of 3 of 6 over the whole texts.
  assert metrics.rouge_lsum("d e f a b c", "a b c\nd e f") == 1.0
  assert metrics.rouge_l("d e f a b c", "a b c\nd e f") == pytest.approx(0.5, abs=1e-12)
  # Without the newline the reference is one sentence: Lsum equals L.
  assert metrics.rouge_lsum("d e f a b c", "a b c d e f") == pytest.approx(0.5, abs=1e-12)
  # A period is not a sentence break: only newlines split.
  assert metrics.rouge_lsum("d e f a b c", "a b c. d e f") == pytest.approx(0.5, abs=1e-12)


def test_rouge_1_and_2_hand_computed():
  # "the cat sat" vs "the cat ran": unigrams 2/3 each way; bigrams {the cat} 1/2 each way.
  assert metrics.rouge_1("the cat sat", "the cat ran") == pytest.approx(2 / 3, abs=1e-12)
  assert metrics.rouge_2("the cat sat", "the cat ran") == pytest.approx(0.5, abs=1e-12)
  assert metrics.rouge_2("cat", "cat") == 0.0  # no bigrams at all
  assert metrics.rouge_1("Cats running", "cat runs") == 1.0  # stemming


# --- exact string match -------------------------------------------------------------------


def test_exact_string_match_does_not_normalise():
  assert metrics.exact_string_match("sum: 42", "sum: 42") == 1.0
  assert metrics.exact_string_match("sum: 42", "sum 42") == 0.0  # SQuAD's EM would say 1
  assert exact_match("sum: 42", "sum 42") == 1.0
  assert metrics.exact_string_match("Paris", ["paris", "Paris"]) == 1.0
  assert metrics.exact_string_match("Paris ", "Paris") == 0.0


# --- corpus scores ------------------------------------------------------------------------

PREDICTIONS = [p for p, _ in PAIRS]
REFERENCES = [r for _, r in PAIRS]


def test_corpus_bleu_and_chrf_match_sacrebleu():
  assert metrics.corpus_bleu(PREDICTIONS, REFERENCES) == sacrebleu.corpus_bleu(
      PREDICTIONS, [REFERENCES]).score
  assert metrics.corpus_chrf(PREDICTIONS, REFERENCES) == sacrebleu.corpus_chrf(
      PREDICTIONS, [REFERENCES]).score
  assert metrics.corpus_bleu(PREDICTIONS, [[r] for r in REFERENCES]) == (
      metrics.corpus_bleu(PREDICTIONS, REFERENCES))
  # Corpus BLEU is not the mean of sentence BLEUs.
  mean_sentence = 100 * sum(map(sentence_bleu, PREDICTIONS, REFERENCES)) / len(PAIRS)
  assert metrics.corpus_bleu(PREDICTIONS, REFERENCES) != pytest.approx(mean_sentence)


def test_corpus_bleu_with_several_references():
  predictions = [p for p, _ in MULTI]
  references = [list(refs) for _, refs in MULTI]
  streams = [list(stream) for stream in zip(*references)]  # [3 references][3 examples]
  assert metrics.corpus_bleu(predictions, references) == sacrebleu.corpus_bleu(
      predictions, streams).score
  # Examples with fewer references: sacrebleu's streams padded with None.
  uneven = [references[0][:1], references[1], references[2][:2]]
  padded = [[refs[i] if i < len(refs) else None for refs in uneven] for i in range(3)]
  assert metrics.corpus_bleu(predictions, uneven) == sacrebleu.corpus_bleu(
      predictions, padded).score
  assert metrics.corpus_chrf(predictions, uneven) == sacrebleu.corpus_chrf(
      predictions, padded).score


def test_corpus_rouge_is_the_mean_f_measure_times_100():
  predictions = PREDICTIONS + [p for p, _ in MULTILINE]
  references = REFERENCES + [r for _, r in MULTILINE]
  scorer = rouge_scorer.RougeScorer(list(metrics.ROUGE_TYPES), use_stemmer=True)
  scores = metrics.corpus_rouge(predictions, references)
  assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
  for kind in metrics.ROUGE_TYPES:
    direct = [scorer.score(r, p)[kind].fmeasure for p, r in zip(predictions, references)]
    assert scores[kind] == pytest.approx(100 * sum(direct) / len(direct), abs=1e-9)


def test_squad_corpus_hand_computed():
  predictions = ["Denver Broncos", "the cat sat", "nothing", "Paris"]
  references = [["Denver Broncos", "Broncos"], "cat on mat", ["x"], ["paris.", "Paris, France"]]
  # EM: 1, 0, 0, 1 -> 50. F1: 1; "cat sat" vs "cat on mat" P = 1/2, R = 1/3 -> 0.4; 0; 1.
  scores = metrics.squad(predictions, references)
  assert scores["exact_match"] == pytest.approx(50.0, abs=1e-9)
  assert scores["f1"] == pytest.approx(100 * (1 + 0.4 + 0 + 1) / 4, abs=1e-9)


def test_accuracy():
  assert metrics.accuracy(["sum: 4", "b: 2 times", "x"], ["sum: 4", "b: 3 times", ["y", "x"]]
                          ) == pytest.approx(200 / 3, abs=1e-9)
  assert metrics.accuracy(["a"], ["a"]) == 100.0


def test_evaluate_merges_metrics():
  scores = metrics.evaluate(("rouge", "bleu", "squad", "accuracy", "chrf"), PREDICTIONS,
                            REFERENCES)
  assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf",
                         "exact_match", "f1", "accuracy"}
  assert scores["bleu"] == metrics.corpus_bleu(PREDICTIONS, REFERENCES)
  assert scores["f1"] == metrics.squad(PREDICTIONS, REFERENCES)["f1"]
  assert metrics.evaluate("bleu", PREDICTIONS, REFERENCES) == {"bleu": scores["bleu"]}
  with pytest.raises(ValueError, match=r"metrics \['meteor'\] are not corpus metrics; "
                     r"allowed: rouge, bleu, chrf, squad, accuracy"):
    metrics.evaluate(("bleu", "meteor"), PREDICTIONS, REFERENCES)


@pytest.mark.parametrize("fn", [metrics.corpus_rouge, metrics.corpus_bleu,
                                metrics.corpus_chrf, metrics.squad, metrics.accuracy])
def test_corpus_input_checks(fn):
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    fn(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="predictions is empty"):
    fn([], [])
  with pytest.raises(ValueError, match="predictions must be a list of strings"):
    fn("abc", ["abc"])
  with pytest.raises(ValueError, match="references must be a list with one entry"):
    fn(["abc"], "abc")
  with pytest.raises(ValueError, match="prediction must be a string"):
    fn([None], ["abc"])
  with pytest.raises(ValueError, match="references is empty"):
    fn(["abc"], [[]])
