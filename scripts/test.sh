#!/usr/bin/env bash
# Set up (scripts/setup.sh), check the lint, the formatting and the docs build, and run the test suite: all of it, or
# with --fast only the tests not marked slow (no long exports, whole-clip loops, live streams or demos). Every skip
# is listed with its reason (-rs). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for arg in "$@"; do
    if [ "$arg" = "--fast" ]; then
        args+=(-m "not slow")
    else
        args+=("$arg")
    fi
done
bash scripts/setup.sh
. .venv/bin/activate
# Lint, format and docs first: they take seconds, and a failure there should not wait for the whole suite.
ruff check .
ruff format --check .
# The type check of the package ([tool.mypy] in pyproject.toml), before the tests: a minute at most, not the suite's wait
mypy
# --strict fails on any warning (a broken link or anchor, a docstring griffe cannot parse); the site is built outside
# the tree, so nothing lands in the checkout. NO_MKDOCS_2_WARNING: Material's notice about MkDocs 2 is not ours.
site_dir=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet --site-dir "$site_dir"
rm -rf "$site_dir"
python -m pytest -q -rs --durations=10 "${args[@]}"
