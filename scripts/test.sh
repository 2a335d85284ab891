#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite: all of it, or with --fast only the tests not marked slow (no
# long exports, whole-clip loops, live streams or demos). Every skip is listed with its reason (-rs). Other
# arguments go to pytest.
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
python -m pytest -q -rs --durations=10 "${args[@]}"
