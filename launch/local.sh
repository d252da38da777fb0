#!/usr/bin/env bash
# Single host: bootstrap .venv when needed, then run the main job with the given flags.
#   ./launch/local.sh --config=configs/demo.py --workdir=workdir/demo
source "$(dirname "$0")/env.sh"
exec python -m calm_jax.main "$@"
