#!/bin/sh
# The trainer job of docker-compose.yml (and of tests/deploy/test_deploy.py, which runs it as a
# local process): train on TRAINER_DATA, or on `recall synth` data when that directory has
# no interactions file, then build the index and publish the bundle into RECALL_ROOT.
# Running replicas see the new CURRENT within RECALL_RELOAD_INTERVAL_S and hot-swap.
# With RECALL_STATE_URL set, the events the service received (POST /v1/events) are
# exported and trained on too: a temp data directory holds the input interactions plus
# the exported ones (and a copy of users/items). A state store that does not answer is
# logged and skipped (the events stay there for the next run); bad data fails the job.
#
#   RECALL_ROOT          bundle root: a volume shared with the service (read-only there),
#                        or s3://bucket/prefix (endpoint AWS_ENDPOINT_URL, credentials from
#                        the AWS chain): the bundle is built in TRAINER_BUNDLES, then uploaded
#   TRAINER_BUNDLES      where an s3:// root's bundles are built (default /tmp/recall-bundles)
#   RECALL_STATE_URL     the service's state store (redis://... or sqlite:///...); unset:
#                        train on the data alone
#   TRAINER_DATA         input data directory (default /data)
#   TRAINER_WORK         where synthetic data is written (default /tmp/recall-synth)
#   TRAINER_SYNTH_ARGS   `recall synth` flags (default: --users 5000 --items 2000)
#   TRAINER_TRAIN_ARGS   extra `recall train` flags, e.g. "--epochs 5" or "--config FILE"
#   TRAINER_INDEX_ARGS   extra `recall build-index` flags, e.g. "--kind hnsw"
#   TRAINER_KEEP         bundles to keep in RECALL_ROOT (CURRENT always stays; default 3)
set -eu

root="${RECALL_ROOT:-/bundles}"
data="${TRAINER_DATA:-/data}"
work="${TRAINER_WORK:-/tmp/recall-synth}"
synth_args="${TRAINER_SYNTH_ARGS:---users 5000 --items 2000}"
train_args="${TRAINER_TRAIN_ARGS:-}"
index_args="${TRAINER_INDEX_ARGS:-}"
keep="${TRAINER_KEEP:-3}"

has_interactions() {
    [ -f "$1/interactions.csv" ] || [ -f "$1/interactions.parquet" ]
}

if ! has_interactions "$data"; then
    echo "train-and-publish: no interactions in $data; using synthetic data in $work" >&2
    if ! has_interactions "$work"; then
        # shellcheck disable=SC2086  # word splitting of the flag lists is intended
        recall synth --out "$work" $synth_args
    fi
    data="$work"
fi

if [ -n "${RECALL_STATE_URL:-}" ]; then
    merged="$(mktemp -d "${TMPDIR:-/tmp}/recall-data.XXXXXX")"
    trap 'rm -rf "$merged"' EXIT
    status=0
    recall events export --state-url "$RECALL_STATE_URL" --out "$merged" \
        --with-data "$data" >/dev/null || status=$?
    if [ "$status" -eq 0 ]; then
        echo "train-and-publish: training on $data plus the exported events" >&2
        data="$merged"
    elif [ "$status" -eq 3 ]; then
        echo "train-and-publish: state store unavailable; training on $data alone" >&2
    else
        exit "$status"
    fi
fi

case "$root" in
    s3://*) build_root="${TRAINER_BUNDLES:-/tmp/recall-bundles}" publish_to="$root" ;;
    *) build_root="$root" publish_to="" ;;
esac
mkdir -p "$build_root"
# `recall train` prints the new bundle's path as its last line on stdout (logs go to stderr).
# shellcheck disable=SC2086
out="$(recall train --data "$data" --out "$build_root" --no-progress $train_args)"
bundle="$(printf '%s\n' "$out" | tail -n 1)"
# shellcheck disable=SC2086
recall build-index "$bundle" --publish ${publish_to:+--root "$publish_to"} --keep "$keep" \
    $index_args >/dev/null
echo "train-and-publish: published $bundle${publish_to:+ to $publish_to}" >&2
