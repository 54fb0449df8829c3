#!/usr/bin/env bash
# Create .venv with the CPU build of torch and fusegpt (editable) with its test tools.
# Needs: python3 (3.10+) with venv (Debian/Ubuntu: apt install python3-venv), a C++ compiler and
# cmake (llama.cpp is built from source for GGUF out), and the package registries.
# On a GPU machine, install the CUDA torch you want into .venv before or after: nothing here pins
# CUDA. TORCH_INDEX overrides where the CPU torch comes from.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in c++ cmake; do
    command -v "$tool" > /dev/null || { echo "setup: '$tool' not found; install a C++ compiler and cmake (Debian/Ubuntu: apt install build-essential cmake)" >&2; exit 2; }
done
python3 -m venv .venv || { echo "setup: python3 cannot create a venv; install it (Debian/Ubuntu: apt install python3-venv)" >&2; exit 2; }
# the CPU wheel index by name: PyPI's default torch on Linux is the multi-GB CUDA build
.venv/bin/pip install --quiet torch==2.13.0 --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
# the test extra builds llama.cpp (llama-cpp-python) from source: ~8 minutes on 2 cores, once
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv/bin/pip install --quiet -e ".[test]"
.venv/bin/fusegpt --help > /dev/null
echo "fusegpt installed in $(pwd)/.venv"
