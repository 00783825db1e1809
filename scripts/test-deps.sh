#!/usr/bin/env bash
# Installs what the integration tests need, only when missing:
#   - redis-server (Debian package), for the Redis fan-out tests (they never skip);
#   - node + npm (Debian packages), and tests/js/node_modules (npm ci from the lockfile), for
#     the @stomp/stompjs interop test and the status page test (playwright-core);
#   - chromium (Debian package, /usr/bin/chromium), the headless browser of the status page
#     test.
# Safe to run repeatedly. Uses sudo for apt-get when not root.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    "${sudo_cmd[@]}" apt-get update -q
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "$@"
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test-deps: installing redis-server"
  apt_install redis-server
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "test-deps: installing nodejs and npm"
  apt_install nodejs npm
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "test-deps: installing chromium"
  apt_install chromium
fi

js="$root/tests/js"
stamp="$js/node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ "$js/package-lock.json" -nt "$stamp" ]; then
  echo "test-deps: npm ci in tests/js"
  (cd "$js" && npm ci --no-audit --no-fund)
fi

echo "test-deps: redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), node $(node --version), stompjs $(node -p "require('$js/node_modules/@stomp/stompjs/package.json').version"), playwright-core $(node -p "require('$js/node_modules/playwright-core/package.json').version"), $(/usr/bin/chromium --version 2>/dev/null | head -1)"
