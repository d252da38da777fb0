"""Learned exit classifiers: `modules` (the Flax modules), `registry` (name -> module,
options, checks; `is_learned`), `steps` (one position at a time, for the decoder),
`teacher_forced` (whole sequences, for training) and `storage` (save and load)."""
