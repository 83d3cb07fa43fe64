#!/bin/bash
# avcd train on every worker of a Cloud TPU VM slice, started from your workstation.
#
#   TPU_NAME=avcd-v5p-32 ZONE=us-east5-a launch/tpu_pod.sh configs/default.py \
#       /mnt/shared/runs/fakeavceleb --config.data.data_dir=/mnt/shared/data \
#       --config.teachers.checkpoint=/mnt/shared/teachers
#
# Optional: PROJECT (gcloud project), AVCD_DIR (the repository on every worker, default ~/avcd,
# with its virtual environment in AVCD_DIR/venv holding avcd and jax[tpu]). WORKDIR and the data
# must be on a file system every worker mounts at the same path (Filestore NFS, or a GCS bucket
# through gcsfuse). See docs/scaling.md, "TPU VM pods".
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM}" "${ZONE:?set ZONE to its zone}"
if (( $# < 2 )); then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
gcloud_flags=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_flags+=(--project="$PROJECT")
fi
avcd_dir=${AVCD_DIR:-'~/avcd'}  # expanded on the workers

# Worker 0 serves JAX's coordinator (JAX's default TPU port, 8476); each worker's process id and
# the number of processes JAX reads from the TPU VM metadata.
coordinator=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_flags[@]}" \
    --format='value(networkEndpoints[0].ipAddress)')
train=$(printf '%q ' avcd train --config="$config" --workdir="$workdir" "$@")
remote="cd $avcd_dir && source venv/bin/activate"
remote+=" && JAX_COORDINATOR_ADDRESS=$coordinator:8476 $train"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --worker=all --command="$remote"
