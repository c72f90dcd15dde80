#!/usr/bin/env bash
# Vendor the styles the published GX Data Docs need, so they render with no network (retrain.datadocs).
#
#   scripts/vendor_datadocs_assets.sh     (re)writes src/retrain/datadocs_assets/ from the npm registry
#
# Pinned packages, fetched with `npm pack` (npm checks each tarball against the registry's sha512
# integrity) and cut down to what the pages use:
#   - bootstrap 4.3.1 (MIT): dist/css/bootstrap.min.css — the version GX 1.24's pages link from a CDN;
#   - @fortawesome/fontawesome-free 6.6.0 (icons CC BY 4.0, fonts SIL OFL 1.1, code MIT):
#     css/fontawesome.min.css, css/solid.min.css, webfonts/fa-solid-900.woff2 — the pages use only
#     solid icons (fa-check-circle, fa-times); the .ttf fallback is left out (every current browser
#     reads woff2).
# Each package's licence file is copied beside its files; VENDORED.txt records package, version,
# tarball integrity and the sha256 of every vendored file. No script is vendored: the Data Docs are
# served under a policy that runs none (plugins/retrain_airflow/ui/proxy.py).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
DEST=$REPO/src/retrain/datadocs_assets
command -v npm >/dev/null 2>&1 || { echo "vendor_datadocs_assets.sh: needs npm (apt-get install npm)" >&2; exit 1; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
npm pack --silent --json bootstrap@4.3.1 @fortawesome/fontawesome-free@6.6.0 >pack.json
rm -rf "$DEST"; mkdir -p "$DEST/bootstrap/css" "$DEST/fontawesome/css" "$DEST/fontawesome/webfonts"
mkdir bs fa
tar xzf bootstrap-4.3.1.tgz -C bs --strip-components=1
tar xzf fortawesome-fontawesome-free-6.6.0.tgz -C fa --strip-components=1
cp bs/dist/css/bootstrap.min.css "$DEST/bootstrap/css/"
cp bs/LICENSE "$DEST/bootstrap/LICENSE"
cp fa/css/fontawesome.min.css fa/css/solid.min.css "$DEST/fontawesome/css/"
cp fa/webfonts/fa-solid-900.woff2 "$DEST/fontawesome/webfonts/"
cp fa/LICENSE.txt "$DEST/fontawesome/LICENSE.txt"
{
  echo "# Vendored by scripts/vendor_datadocs_assets.sh from the npm registry (npm pack). Do not edit."
  python3 -c 'import json; [print("package", p["id"], "integrity", p["integrity"]) for p in json.load(open("pack.json"))]'
  (cd "$DEST" && find . -type f ! -name VENDORED.txt | sort | xargs sha256sum)
} >"$DEST/VENDORED.txt"
echo "vendored into $DEST:"; cat "$DEST/VENDORED.txt"
