#!/bin/sh
# Installs what tests/web_ui.rs drives the page with, outside the
# repository: playwright-core (it drives Debian's chromium, /usr/bin/chromium,
# and downloads no browser) and axe-core, with `npm ci` from
# package-lock.json under ${DEORCH_CACHE:-$HOME/.cache/deorch}/web.
# Idempotent: does nothing when the same lock is already installed.
# Chromium itself is a Debian package:
#   apt-get install -y --no-install-recommends chromium fonts-dejavu-core
set -eu
here=$(cd "$(dirname "$0")" && pwd)
web=${DEORCH_CACHE:-$HOME/.cache/deorch}/web
mkdir -p "$web"

if ! [ -f "$web/node_modules/playwright-core/package.json" ] || ! [ -f "$web/node_modules/axe-core/axe.min.js" ] \
    || ! cmp -s "$here/package-lock.json" "$web/package-lock.json"; then
    cp "$here/package.json" "$here/package-lock.json" "$web/"
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "web UI test tools ready in $web"
