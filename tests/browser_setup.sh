#!/usr/bin/env bash
# The browser test drives Debian's Chromium; install it when missing (root on CI and dev machines).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "tests/browser_setup.sh: /usr/bin/chromium missing; run: sudo apt-get install -y chromium" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
