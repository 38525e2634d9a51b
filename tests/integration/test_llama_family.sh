#!/usr/bin/env bash
# The properties that make strata strata hold for the llama family too: the
# GPT-2 tests of rank invariance (W = 1, 2, 3, 4, ZeRO-1, bitwise), bitwise
# resume after SIGTERM, elastic resume and frozen blocks / regularisers run
# again with their configs turned into llama-family ones (lib.sh's
# apply_family: GQA, untied head, q/k/v bias, QK-norm, RoPE).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${STRATA_WORK:-$(mktemp -d)}
for t in test_rank_invariance test_resume test_elastic_resume test_regularisers; do
  echo "== $t, llama family"
  STRATA_WORK="$work/$t" FAMILY=llama bash "$here/$t.sh"
done
