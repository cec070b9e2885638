#!/usr/bin/env bash
# Installs Debian's `chromium` for the market explorer's browser test (tests/matcher/test_explorer.py,
# driven through Playwright with `executable_path`: Playwright's own browser download cannot work
# here). A no-op when /usr/bin/chromium exists; needs root (CI runs as root on a fresh machine).
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium.sh: /usr/bin/chromium is missing and this is not root: the explorer test will fail;" \
       "install it with \`sudo apt-get install chromium\`" >&2
  exit 0
fi
echo "chromium.sh: installing Debian's chromium (apt-get)..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
