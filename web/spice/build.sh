#!/bin/sh
# Vendors spice-html5, the SPICE client in JavaScript, from Debian's
# package (spice-html5 0.3.0-2, `apt-get install spice-html5`, under
# /usr/share/spice-html5) into web/spice/, unmodified: the ES modules the
# console page imports (main.js and everything it imports), not the demo
# pages, spice.css, the module loader for browsers without modules or
# spicearraybuffer.js (an ArrayBuffer.slice polyfill nothing imports); and
# the package's copyright file, which says their licenses (LGPL-3.0 or
# later; jsbn/rsa/rng/prng4 MIT-style, sha1.js BSD-3-Clause). The files
# are committed, so `cargo build` needs neither the package nor the
# network; the node serves them at /console/spice-html5/PATH
# (src/http/console_page.rs embeds the same list).
#
#   web/spice/build.sh           copy the files from the installed package
#   web/spice/build.sh --check   fail (exit 1) unless the installed package
#                                is 0.3.0-2, its files are as dpkg installed
#                                them (its md5sums), and every vendored file
#                                is its file byte for byte
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=/usr/share/spice-html5
want=0.3.0-2
files="atKeynames.js bitmap.js cursor.js display.js enums.js filexfer.js
inputs.js lz.js main.js playback.js png.js port.js quic.js resize.js
simulatecursor.js spiceconn.js spicedataview.js
spicemsg.js spicetype.js ticket.js utils.js webm.js wire.js
thirdparty/jsbn.js thirdparty/prng4.js thirdparty/rng.js thirdparty/rsa.js
thirdparty/sha1.js"
copyright=/usr/share/doc/spice-html5/copyright

version=$(dpkg-query -W -f='${Version}' spice-html5 2>/dev/null || true)
if [ "$version" != "$want" ]; then
    echo "web/spice/build.sh: spice-html5 $want is not installed (found: ${version:-none}): apt-get install spice-html5=$want" >&2
    exit 1
fi
# The installed files are the package's: dpkg's own md5sums of them.
sums=/var/lib/dpkg/info/spice-html5.md5sums
for f in $files; do
    line=$(grep "  usr/share/spice-html5/$f\$" "$sums" || true)
    if [ -z "$line" ]; then
        echo "web/spice/build.sh: spice-html5 $want has no $f" >&2
        exit 1
    fi
    if [ "$(md5sum <"$src/$f" | cut -d' ' -f1)" != "${line%% *}" ]; then
        echo "web/spice/build.sh: $src/$f is not the package's (dpkg --verify spice-html5)" >&2
        exit 1
    fi
done

if [ "${1:-}" = "--check" ]; then
    bad=0
    for f in $files; do
        if ! cmp -s "$src/$f" "$here/$f"; then
            echo "web/spice/$f differs from $src/$f" >&2
            bad=1
        fi
    done
    if ! cmp -s "$copyright" "$here/copyright"; then
        echo "web/spice/copyright differs from $copyright" >&2
        bad=1
    fi
    # Nothing else is vendored.
    extra=$(cd "$here" && find . -type f ! -name build.sh ! -name copyright | sed 's#^\./##' | sort)
    listed=$(for f in $files; do echo "$f"; done | sort)
    if [ "$extra" != "$listed" ]; then
        echo "web/spice/ holds other files than the list:" >&2
        echo "$extra" | grep -vxF "$listed" >&2 || true
        bad=1
    fi
    if [ "$bad" != 0 ]; then
        echo "web/spice/ is not spice-html5 $want as Debian ships it: run web/spice/build.sh and commit it" >&2
        exit 1
    fi
    echo "web/spice/ is spice-html5 $want as Debian ships it"
    exit 0
fi

mkdir -p "$here/thirdparty"
for f in $files; do
    cp "$src/$f" "$here/$f"
done
cp "$copyright" "$here/copyright"
echo "vendored spice-html5 $want into $here ($(cd "$here" && cat $files | wc -c) bytes of JavaScript)"
