#!/usr/bin/env bash
# A headless Chromium for the browser tests (Playwright drives the system's: it never downloads one)
# and a font for the pages it draws. Idempotent. Needs root where it must install.
set -euo pipefail

if ! command -v chromium >/dev/null || ! dpkg -s fonts-dejavu-core >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null
fi

page=$(chromium --headless --no-sandbox --disable-gpu --dump-dom 'data:text/html,<p>chromium ok</p>' 2>&1) ||
    { echo "chromium did not start:"; echo "$page"; exit 1; }
grep -q 'chromium ok' <<<"$page" || { echo "chromium drew nothing:"; echo "$page"; exit 1; }
echo "$(chromium --version 2>/dev/null) ok"
