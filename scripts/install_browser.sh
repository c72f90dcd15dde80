#!/usr/bin/env bash
# Install the headless browser the UI end-to-end test drives (tests/plugins/test_ui.py -m e2e):
# Debian's chromium + chromium-driver (no browser download from the internet; ~35 s, and apt may
# upgrade a few shared system libraries) and a CJK font (fonts-wqy-zenhei, 7.5 MB) so Chinese
# entity text renders in screenshots. Idempotent: a no-op when all three are present.
#
#   scripts/install_browser.sh
#
# The Python side (selenium) comes with the Airflow environment's lock (requirements/airflow.in).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
    && [ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ]; then
  echo "chromium already installed: $(chromium --version 2>/dev/null)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-wqy-zenhei >/dev/null
echo "installed: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null)"
