"""The arithmetic preview examples (calm_jax.data.arithmetic_preview), which the benchmarks
sample."""

from calm_jax.data.arithmetic_preview import sample_examples


def test_generated_examples_are_deterministic_and_correct():
  first, again = sample_examples(20, seed=7), sample_examples(20, seed=7)
  assert first == again
  assert first != sample_examples(20, seed=8)
  for example in first:
    kind, payload = example.inputs.split(": ")
    if kind == "add":
      a, b = payload.split("+")
      assert example.targets == str(int(a) + int(b))
    else:
      assert example.targets == (payload if kind == "copy" else payload[::-1])
