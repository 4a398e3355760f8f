#!/usr/bin/env bash
# Login round trip without and with level 2, in one run: `deorch bench
# login` against its in-process HTTPS API, then the same with a policy that
# asks a directory password checked by a real slapd on loopback (started
# here, stopped at the end). Usage: scripts/bench-login.sh [COUNT]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
count="${1:-1000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/deorch/target}"
for t in /usr/sbin/slapd /usr/sbin/slapadd /usr/sbin/slappasswd /usr/bin/python3; do
  [ -x "$t" ] || { echo "bench-login: $t missing (apt-get install slapd ldap-utils python3)" >&2; exit 1; }
done
(cd "$repo" && cargo build --release --quiet --bin deorch)
bin="$CARGO_TARGET_DIR/release/deorch"
dir="$(mktemp -d /tmp/deorch-bench-slapd.XXXXXX)"
slapd_pid=""
cleanup() { [ -n "$slapd_pid" ] && kill "$slapd_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
mkdir -p "$dir/db"
printf 'correct horse battery staple\n' > "$dir/password"
cat > "$dir/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile $dir/slapd.pid
database mdb
maxsize 16777216
suffix "dc=example,dc=org"
rootdn "cn=admin,dc=example,dc=org"
rootpw secret
directory $dir/db
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
CONF
hash="$(/usr/sbin/slappasswd -s 'correct horse battery staple')"
cat > "$dir/users.ldif" <<LDIF
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: alice
sn: alice
userPassword: $hash
LDIF
/usr/sbin/slapadd -f "$dir/slapd.conf" -l "$dir/users.ldif" 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/sbin/slapd -f "$dir/slapd.conf" -h "ldap://127.0.0.1:$port/" -d 0 >/dev/null 2>&1 &
slapd_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
"$bin" bench login --count "$count"
"$bin" bench login --count "$count" --level2 "ldap://127.0.0.1:$port" \
  'uid={user},ou=people,dc=example,dc=org' alice "$dir/password"
