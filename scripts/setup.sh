#!/usr/bin/env bash
# Create .venv with the CPU build of torch and fusegpt (editable) with its test tools.
# On a GPU machine, install the CUDA torch you want into .venv before or after: nothing here pins CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet torch==2.13.0
# the test extra builds llama.cpp (llama-cpp-python) from source: ~8 minutes on 2 cores, once
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv/bin/pip install --quiet -e ".[test]"
.venv/bin/fusegpt --help > /dev/null
echo "fusegpt installed in $(pwd)/.venv"
