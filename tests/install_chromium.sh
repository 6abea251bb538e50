#!/usr/bin/env bash
# Install headless Chromium (Debian package `chromium`) for tests/test_report.py, only if missing.
# Needs root and the Debian mirrors; when either is lacking it says so and exits 0, and the
# report test then skips with that reason instead of failing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: chromium is not installed and this is not a root Debian machine; skipping" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; }; then
    echo "install_chromium.sh: apt-get could not install chromium (no mirror reachable?); the report test will skip" >&2
fi
exit 0
