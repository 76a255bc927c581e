#!/usr/bin/env bash
# The README's picture: docs/report-index.png from reports/index.html of a finished run (headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f reports/index.html ] || { echo "no reports/index.html: run snakemake --cores all first" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --user-data-dir="$profile" --hide-scrollbars --window-size=1200,1700 \
  --screenshot="$PWD/docs/report-index.png" "file://$PWD/reports/index.html"
