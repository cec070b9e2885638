#!/usr/bin/env bash
# Installs Debian's `postgresql` server binaries for the Postgres store and failover tests
# (tests/postgres.py starts a private throwaway cluster per pytest worker in a temp dir; nothing
# here starts or configures a system-wide server). A no-op when initdb and pg_ctl are found (on
# PATH or under /usr/lib/postgresql/*/bin); needs root (CI runs as root on a fresh machine).
set -euo pipefail
have_server() {
  command -v initdb >/dev/null && command -v pg_ctl >/dev/null && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}
# As root the clusters run as the `postgres` OS user, so that user must exist too.
if have_server && { [ "$(id -u)" -ne 0 ] || id postgres >/dev/null 2>&1; }; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "postgres.sh: initdb/pg_ctl are missing and this is not root: the Postgres tests will fail;" \
       "install them with \`sudo apt-get install postgresql\`" >&2
  exit 0
fi
echo "postgres.sh: installing Debian's postgresql (apt-get)..."
apt-get update -qq
# The package's own post-install creates the `postgres` OS user, which tests/postgres.py runs the
# throwaway clusters as (the server refuses to run as root). Whether the package also starts its
# own system cluster does not matter: the tests never use it.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
ls -d /usr/lib/postgresql/*/bin
