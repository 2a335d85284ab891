#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with the CPU build of torch, then the project and its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, pinned: this version is the local CPU wheel; an unpinned torch pulls several GB of CUDA packages
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
