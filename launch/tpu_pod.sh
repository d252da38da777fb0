#!/usr/bin/env bash
# TPU pod: the same command on every worker; jax.distributed finds the coordinator itself.
#   TPU_NAME=my-pod ZONE=us-central2-b ./launch/tpu_pod.sh --config=configs/demo.py --workdir=gs://bucket/run
# The repository must already be on every worker at ~/calm_jax (e.g. gcloud ... scp --worker=all),
# and on TPU hosts requirements.txt's jax must be replaced by jax[tpu].
#
# Decoding modes (decode, generate, calibrate, evaluate, analyze) use the run's mesh too:
#   --config.mesh.data=-1     every chip of every worker takes a share of the rows; each data
#                             shard runs its own decode loops (one slow example holds only its
#                             shard); each worker decodes its own rows, process 0 writes outputs
#   --config.mesh.model=M     parameters split over M chips by --config.mesh.rules (a model too
#                             large for one chip, e.g. T5-XXL in bfloat16)
#   --config.calibration.batch_size=B   rows per grid decode call: a multiple of the data size
#                             keeps every chip fed (fewer rows are padded with finished rows)
#   --config.calibration.save_every=N   calibrate / evaluate save their grid every N examples to
#                             <workdir>/resume/<mode> (evaluate also each test decode and timing
#                             round); rerun the same command after a preemption to continue (the
#                             workdir must be storage every worker shares)
# Every decoding mode prints its mesh first, e.g. "[calibrate] mesh data=32 model=1 over 8 process(es)".
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
flags=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd ~/calm_jax && ./launch/local.sh --distributed $flags"
