"""The calibration side of CALM, in NumPy and SciPy only (importable without JAX).

- `ltt`: Learn-then-Test threshold calibration (p-values, fixed-sequence testing, rules).
- `consistency`: the loss matrix from decoded outputs (textual or risk consistency).
- `validity`: the validity study of a rule on random calibration/test splits.
"""
