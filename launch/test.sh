#!/usr/bin/env bash
# Bootstrap .venv with the test requirements and the optional seqio/TFDS stack when needed
# (so the seqio tests run instead of skipping), then run the whole test suite.
# Extra arguments go to pytest (e.g. ./launch/test.sh -k parity).
CALM_REQUIREMENTS="requirements-test.txt requirements-seqio.txt" source "$(dirname "$0")/env.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -q tests "$@"
