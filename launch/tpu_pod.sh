#!/usr/bin/env bash
# TPU pod: the same command on every worker; jax.distributed finds the coordinator itself.
#   TPU_NAME=my-pod ZONE=us-central2-b ./launch/tpu_pod.sh --config=configs/demo.py --workdir=gs://bucket/run
# The repository must already be on every worker at ~/calm_jax (e.g. gcloud ... scp --worker=all),
# and on TPU hosts requirements.txt's jax must be replaced by jax[tpu].
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
flags=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd ~/calm_jax && ./launch/local.sh --distributed $flags"
