#!/bin/sh
# The distributed trainer Job (docker/k8s/train-distributed.yaml; tests/deploy/
# test_train_distributed.py runs it as local processes): every pod runs this script, and
# torchrun's c10d rendezvous turns the pods into one data-parallel training
# (docs/training.md, "Kubernetes"). Rank 0 writes the one bundle and prints its path; the
# pod that ran rank 0 builds the index and publishes it to RECALL_ROOT, the others exit 0.
# `--resume` always: a Job that restarts its pods continues from the last checkpoint, which
# lives under TRAINER_BUNDLES, so that directory must be shared by every pod (a
# ReadWriteMany volume).
#
# Every rank must read the same data: TRAINER_DATA is a fixed snapshot (for example one
# `recall events export --with-data` written there before the Job starts), never live
# events, and never synthetic data made per pod.
#
#   TRAINER_NNODES         pods in the Job (= its parallelism and completions)
#   TRAINER_RDZV_ENDPOINT  HOST:PORT of the rendezvous: the first pod's stable name
#   TRAINER_RDZV_ID        the run's id, the same on every pod (default recall-train)
#   TRAINER_NPROC          ranks per pod (default 1; one per GPU with --device cuda)
#   TRAINER_JOIN_TIMEOUT_S how long the first pod waits for the others (default 600)
#   TRAINER_DATA           input data directory (default /data)
#   TRAINER_BUNDLES        the shared directory bundles and checkpoints are written to
#   RECALL_ROOT            where the bundle is published: s3://bucket/prefix, or a directory,
#                          which must then be TRAINER_BUNDLES itself (a local root publishes
#                          the bundles inside it)
#   TRAINER_TRAIN_ARGS     extra `recall train` flags, e.g. "--epochs 5 --checkpoint-steps 500"
#   TRAINER_INDEX_ARGS     extra `recall build-index` flags, e.g. "--kind hnsw"
#   TRAINER_KEEP           bundles to keep in RECALL_ROOT (CURRENT always stays; default 3)
set -eu

nnodes="${TRAINER_NNODES:?set TRAINER_NNODES (the pods in the Job)}"
endpoint="${TRAINER_RDZV_ENDPOINT:?set TRAINER_RDZV_ENDPOINT (HOST:PORT of the first pod)}"
data="${TRAINER_DATA:-/data}"
bundles="${TRAINER_BUNDLES:?set TRAINER_BUNDLES (a directory every pod shares)}"
root="${RECALL_ROOT:-/bundles}"
train_args="${TRAINER_TRAIN_ARGS:-}"
index_args="${TRAINER_INDEX_ARGS:-}"
keep="${TRAINER_KEEP:-3}"

if [ ! -f "$data/interactions.csv" ] && [ ! -f "$data/interactions.parquet" ]; then
    echo "train-distributed: no interactions file in TRAINER_DATA=$data" >&2
    exit 2
fi
mkdir -p "$bundles"
# shellcheck disable=SC2086  # word splitting of the flag lists is intended
printed="$(torchrun --nnodes "$nnodes" --nproc-per-node "${TRAINER_NPROC:-1}" \
    --rdzv-backend c10d --rdzv-endpoint "$endpoint" \
    --rdzv-id "${TRAINER_RDZV_ID:-recall-train}" \
    --rdzv-conf "join_timeout=${TRAINER_JOIN_TIMEOUT_S:-600}" \
    --no-python recall train --data "$data" --out "$bundles" --no-progress --resume \
    $train_args)"
bundle="$(printf '%s\n' "$printed" | tail -n 1)"
if [ -z "$bundle" ]; then
    echo "train-distributed: rank 0 ran on another pod; that pod publishes" >&2
    exit 0
fi
# shellcheck disable=SC2086
recall build-index "$bundle" --publish --root "$root" --keep "$keep" $index_args >/dev/null
echo "train-distributed: published $bundle to $root" >&2
