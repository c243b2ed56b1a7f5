#!/usr/bin/env bash
# Install everything the tests need, lint, then run the whole suite: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -r requirements-test.txt
python -m pip install -q --no-deps d2l==0.17.6  # the book's library, the faithfulness oracle (its pins are for old torch)
if ! command -v chromium >/dev/null; then  # the browser tests drive Debian's chromium
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }
fi
python -m ruff check .  # the lint rules are in pyproject.toml
python -m pytest "$@"
