#!/bin/sh
# llama-cpp-python in its own venv (outside the repo), for the comparison and the benchmark.
# Compiling takes ~13-15 min on 2 cores; runs niced.  Usage: tools/llm/llama_env.sh [venv-dir]
set -eu
VENV="${1:-${EDGED_LLAMA_VENV:-/tmp/edged-llama-venv}}"
if "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then echo "$VENV"; exit 0; fi
python3 -m venv "$VENV"
CMAKE_BUILD_PARALLEL_LEVEL=2 MAKEFLAGS=-j2 nice -n 19 "$VENV/bin/pip" install -q llama-cpp-python numpy >&2
echo "$VENV"
