#!/bin/sh
# Builds web/novnc/rfb.js, noVNC's RFB client as one ESM file for the
# console page (web/console.js imports it; entry.js says what it holds),
# with esbuild: tree-shaken and minified. The package is installed with
# `npm ci` from package-lock.json (exact versions) under
# ${DEORCH_CACHE:-$HOME/.cache/deorch}/web-novnc, outside the repository.
# The bundle is committed, so `cargo build` needs neither npm nor the
# network; rerun this after changing entry.js or the versions.
#
# noVNC is MPL-2.0 (pako inside it MIT, its DES BSD-style): the bundle
# opens with their notices, taken from the installed package, and says
# where its source is.
#
#   web/novnc/build.sh           rebuild web/novnc/rfb.js
#   web/novnc/build.sh --check   rebuild into a temporary file and fail
#                                (exit 1) if it differs from the committed one
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${DEORCH_CACHE:-$HOME/.cache/deorch}/web-novnc
mkdir -p "$cache"

if ! [ -x "$cache/node_modules/.bin/esbuild" ] || ! cmp -s "$here/package-lock.json" "$cache/package-lock.json"; then
    cp "$here/package.json" "$here/package-lock.json" "$cache/"
    (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error)
fi
cp "$here/entry.js" "$cache/entry.js"

pkg=$cache/node_modules/@novnc/novnc
version=$(node -p "require('$pkg/package.json').version")
# The notices: noVNC's LICENSE.txt, the DES file's own header (its BSD
# terms ask binary copies to carry it), pako's MIT license; a `*/` in
# them (LICENSE.txt's `core/**/*.js`) is written `*\/`, or the comment
# would end early.
{
    echo "/*! noVNC $version, its RFB client (core/), from npm @novnc/novnc@$version;"
    echo "    source: https://github.com/novnc/noVNC/tree/v$version"
    echo "    Bundled for deorch by web/novnc/build.sh (esbuild, minified)."
    echo "    This Source Code Form is subject to the terms of the Mozilla Public"
    echo "    License, v. 2.0. If a copy of the MPL was not distributed with this"
    echo "    file, You can obtain one at https://mozilla.org/MPL/2.0/."
    echo
    echo "--- noVNC LICENSE.txt ---"
    cat "$pkg/LICENSE.txt"
    echo
    echo "--- core/crypto/des.js ---"
    sed -n '2,/^ \*\//p' "$pkg/core/crypto/des.js" | sed '$d'
    echo
    echo "--- vendor/pako/LICENSE ---"
    cat "$pkg/vendor/pako/LICENSE"
} | sed 's#\*/#*\\/#g' > "$cache/banner.js"
echo "*/" >> "$cache/banner.js"
if [ "$(grep -c '\*/' "$cache/banner.js")" != 1 ]; then
    echo "web/novnc/build.sh: a license text holds '*/'" >&2
    exit 1
fi

out=$here/rfb.js
if [ "${1:-}" = "--check" ]; then
    out=$cache/rfb.check.js
fi
# es2022: noVNC awaits at the top level (its H.264 probe).
(cd "$cache" && ./node_modules/.bin/esbuild entry.js --bundle --format=esm \
    --minify --target=es2022 --legal-comments=eof --log-level=warning \
    --banner:js="$(cat banner.js)" --outfile="$out")
if [ "${1:-}" = "--check" ]; then
    if ! cmp -s "$out" "$here/rfb.js"; then
        echo "web/novnc/rfb.js is not what web/novnc/build.sh builds from entry.js and package-lock.json: run web/novnc/build.sh and commit it" >&2
        exit 1
    fi
    echo "web/novnc/rfb.js is up to date"
else
    echo "built $out ($(wc -c <"$out") bytes)"
fi
