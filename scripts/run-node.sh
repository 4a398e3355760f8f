#!/usr/bin/env bash
# Run one deorch node with embedded defaults on manifests/: installs what is
# missing, builds, and runs in the foreground (Ctrl-C stops it).
# State lives in ./.deorch/ unless DEORCH_STATE_DIR is set.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_rust
say "building deorch"
cargo build --release --locked --quiet
bin="$CARGO_TARGET_DIR/release/deorch"
state="${DEORCH_STATE_DIR:-$PWD/.deorch/state}"
socket="${DEORCH_SOCKET:-$PWD/.deorch/deorch.sock}"
say "node starting: manifests/ -> $state (socket $socket)"
say "in another shell: $bin get --socket $socket"
exec "$bin" node run --manifests manifests --state-dir "$state" --socket "$socket" "$@"
