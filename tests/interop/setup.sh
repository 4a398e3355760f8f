#!/bin/sh
# Installs the real Bitcoin libraries the interop tests talk to, outside the
# repository: a Python venv with python-bitcoinlib and a node_modules tree
# with bitcoinjs-message, both under ${DEORCH_CACHE:-$HOME/.cache/deorch}.
# Idempotent: does nothing when both are already there.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${DEORCH_CACHE:-$HOME/.cache/deorch}
venv=$cache/venv
node=$cache/node
mkdir -p "$cache"

if ! "$venv/bin/python" -c 'import bitcoin.signmessage' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet python-bitcoinlib==0.12.2
fi

if ! [ -d "$node/node_modules/bitcoinjs-message" ] || ! cmp -s "$here/package.json" "$node/package.json"; then
    mkdir -p "$node"
    cp "$here/package.json" "$node/package.json"
    if [ -f "$here/package-lock.json" ]; then
        cp "$here/package-lock.json" "$node/package-lock.json"
        (cd "$node" && npm ci --no-audit --no-fund --loglevel=error)
    else
        (cd "$node" && npm install --no-audit --no-fund --loglevel=error)
    fi
fi
echo "interop tools ready in $cache"
