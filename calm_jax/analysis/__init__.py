"""Analysis studies of early exit: how a decoder's prediction, confidence and hidden state
evolve over its layers, and what the local oracle achieves.

Every study is a NumPy function of arrays the forward pass or the decoder returns; nothing
here reimplements the model. `collect` is the one module that runs the model (JAX) to
produce those arrays; the others import only NumPy and matplotlib.

Studies (names used by `--config.analysis.studies`):
  stability   fraction of tokens whose top-1 no longer changes after each layer
  confidence  confidence in the eventual prediction per layer; monotone fractions
  rank        rank of the final top-1 within each layer's distribution
  accuracy    accuracy and confidence per layer (intermediate-layer over-confidence)
  saturation  cosine similarity of each layer's state with the final one; easy vs
              difficult sequences
  oracle      the local oracle with propagated state vs with the true cache
"""

STUDIES = ("stability", "confidence", "rank", "accuracy", "saturation", "oracle")
