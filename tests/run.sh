#!/usr/bin/env bash
# Set up a test environment from scratch, run the linters (ruff, mypy) and the whole test suite.
#   bash tests/run.sh            (extra pytest arguments are passed on, e.g. -m "not slow")
# Creates .venv-test with torch 2.14.1 + torchvision 0.29.1 (needed by the Zennit peer), spray with
# its test and peers extras pinned by tests/constraints.txt, and headless Chromium for the
# report test when apt-get is available.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SPRAY_TEST_VENV:-.venv-test}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c tests/constraints.txt torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -c tests/constraints.txt -e ".[test,peers,slurm]"
"$VENV/bin/python" -m pip install -q -c tests/constraints.txt --no-deps lxt
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "chromium could not be installed; the browser test will be skipped"
fi
# the linters first: a finding fails the run before the (longer) test suite starts
"$VENV/bin/ruff" check spray tests
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest -q "$@"
