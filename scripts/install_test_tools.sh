#!/usr/bin/env bash
# Debian packages the test suite drives (no download from outside the package registry):
#   - chromium + chromium-driver and a CJK font (fonts-wqy-zenhei) for the UI browser tests, so
#     Chinese entity text renders in the screenshots (~35 s; apt may upgrade a few shared libraries);
#   - docker-compose (Debian's 1.29) to render docker-compose.yml in tests/test_compose.py: Compose v2
#     is not packaged for bookworm and no other registry reachable here ships it.
# Idempotent: a no-op when everything is present. `make test` runs it.
#
#   scripts/install_test_tools.sh
#
# The Python side (selenium) comes with the Airflow environment's lock (requirements/airflow.in).
# The Docker engine is installed on demand by scripts/dockerd.sh.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || missing+=(fonts-wqy-zenhei)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -eq 0 ]; then
  echo "test tools present: $(chromium --version 2>/dev/null), $(docker-compose version --short 2>/dev/null)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null), docker-compose $(docker-compose version --short 2>/dev/null)"
