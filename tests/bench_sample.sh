#!/usr/bin/env bash
# bench_sample.sh — time per generated token with the KV cache at token 20
# against token 200 (issue 15: within 1.5x), GPT-2 and llama on the small
# config's size; see tests/bench_sample.c.
#
#   tests/bench_sample.sh [BUILD_DIR]     (default: build)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${1:-$here/../build}"
cmake --build "$build" --target bench_sample >/dev/null
"$build/bench_sample"
