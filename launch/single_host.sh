#!/usr/bin/env bash
# Train on one host with N devices: launch/single_host.sh CONFIG N [KEY VALUE ...]
set -euo pipefail
config=$1; n=$2; shift 2
exec python -m jaxseg.main --config "$config" --num-devices "$n" "$@"
