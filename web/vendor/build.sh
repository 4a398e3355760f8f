#!/bin/sh
# Builds web/vendor/crypto.js, the one ESM bundle of npm code the web page
# loads (entry.js says what it holds), with esbuild: tree-shaken and
# minified. The packages are installed with `npm ci` from package-lock.json
# (exact versions) under ${DEORCH_CACHE:-$HOME/.cache/deorch}/web-vendor,
# outside the repository. The bundle is committed, so `cargo build` needs
# neither npm nor the network; rerun this after changing entry.js or the
# versions.
#
#   web/vendor/build.sh           rebuild web/vendor/crypto.js
#   web/vendor/build.sh --check   rebuild into a temporary file and fail
#                                 (exit 1) if it differs from the committed one
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${DEORCH_CACHE:-$HOME/.cache/deorch}/web-vendor
mkdir -p "$cache"

if ! [ -x "$cache/node_modules/.bin/esbuild" ] || ! cmp -s "$here/package-lock.json" "$cache/package-lock.json"; then
    cp "$here/package.json" "$here/package-lock.json" "$cache/"
    (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error)
fi
cp "$here/entry.js" "$cache/entry.js"

out=$here/crypto.js
if [ "${1:-}" = "--check" ]; then
    out=$cache/crypto.check.js
fi
# --legal-comments=eof: the packages' MIT notices (their `/*! ... */`
# comments) go with the code, gathered at the end of the bundle.
(cd "$cache" && ./node_modules/.bin/esbuild entry.js --bundle --format=esm \
    --minify --target=es2020 --legal-comments=eof --log-level=warning \
    --outfile="$out")
if [ "${1:-}" = "--check" ]; then
    if ! cmp -s "$out" "$here/crypto.js"; then
        echo "web/vendor/crypto.js is not what web/vendor/build.sh builds from entry.js and package-lock.json: run web/vendor/build.sh and commit it" >&2
        exit 1
    fi
    echo "web/vendor/crypto.js is up to date"
else
    echo "built $out ($(wc -c <"$out") bytes)"
fi
