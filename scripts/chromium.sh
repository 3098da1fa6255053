# Make sure Debian's Chromium is installed, for the dashboard's browser tests (Playwright
# drives it; browsers cannot be downloaded here). Source it or run it.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    echo "chromium: not installed; installing Debian's chromium with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
