#!/usr/bin/env bash
# bench_pack.sh — how fast `strata pack` tokenizes, against the JavaScript
# reference GPT-2 tokenizer (npm gpt-3-encoder under node) on the same text,
# on the same machine, in the same run, each pinned to one core.
#
#   tests/bench_pack.sh [STRATA_BINARY]      (default: build/strata)
#
# Text: Debian's license texts, every Texinfo manual in /usr/share/info and
# glibc's headers, i.e. English prose and C. The byte tokenizer packs that
# text repeated to >= 64 MB (its speed does not depend on content); GPT-2
# packs it once. strata's figures are for the whole `strata pack` (reading,
# tokenizing, writing, fsync); the reference's are for encode() alone (its
# files are read before the clock starts), which flatters it. Wall and CPU
# (user+sys) time are both shown: on a busy machine wall time drifts, CPU
# time much less. Targets from issue 3: byte >= 100 MB/s per core, GPT-2 >= 5
# MB/s per core. With tests/fetch_hf_tokenizers.sh's files, also packs the
# same text with Llama 3's, Qwen3's and Llama 2's tokenizer.json, each as a
# ratio to the GPT-2 packer.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
strata="${1:-${STRATA:-$here/../build/strata}}"
[[ -x "$strata" ]] || {
    echo "bench_pack: no strata binary at $strata (build first, or pass its path)" >&2
    exit 1
}
gpt2_dir="$("$here/fetch_gpt2_tokenizer.sh")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pin=()
command -v taskset >/dev/null && pin=(taskset -c "${STRATA_BENCH_CPU:-0}")

# ---- the text ------------------------------------------------------------------------------
{
    cat /usr/share/common-licenses/{Apache-2.0,Artistic,BSD,GFDL-1.3,GPL-1,GPL-2,GPL-3,LGPL-2,LGPL-2.1,LGPL-3,MPL-1.1,MPL-2.0} 2>/dev/null || true
    for f in /usr/share/info/*.info*.gz; do zcat -- "$f" 2>/dev/null || true; done
    cat /usr/include/*.h 2>/dev/null || true
} >"$work/text.txt"
# the reference reads JavaScript strings: keep the text valid UTF-8 so both see the same bytes
iconv -f UTF-8 -t UTF-8 -c <"$work/text.txt" >"$work/corpus.txt"
bytes=$(stat -c %s "$work/corpus.txt")
reps=$(((64000000 + bytes - 1) / bytes))
for ((i = 0; i < reps; i++)); do cat "$work/corpus.txt"; done >"$work/big.txt"
big=$(stat -c %s "$work/big.txt")

mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e6 }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0 ? b / 1e6 / s : 0) }'; }

# Runs a command pinned to one core; sets WALL and CPU (user+sys) seconds.
timed() {
    local t0 t1 tf="$work/times"
    t0=$(date +%s.%N)
    /usr/bin/env time -f "%U %S" -o "$tf" "${pin[@]}" "$@" >"$work/last.out" 2>"$work/last.err" || {
        cat "$work/last.err" >&2
        return 1
    }
    t1=$(date +%s.%N)
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    CPU=$(awk '{ print $1 + $2 }' "$tf")
}
command -v time >/dev/null || [[ -x /usr/bin/time ]] || {
    echo "bench_pack: needs /usr/bin/time (apt-get install time)" >&2
    exit 1
}

echo "bench_pack: $(mb "$bytes") MB of English and C text ($(nproc) cores here; each run on one core)"
echo "  strata: $strata"

timed "$strata" pack --tokenizer byte --out "$work/byte" "$work/big.txt"
byte_wall=$WALL byte_cpu=$CPU
printf '  %-38s %8s MB/s wall  %8s MB/s cpu  (%s MB; target >= 100 per core)\n' \
    "strata pack --tokenizer byte" "$(rate "$big" "$byte_wall")" "$(rate "$big" "$byte_cpu")" "$(mb "$big")"

timed "$strata" pack --tokenizer gpt2 --vocab "$gpt2_dir/encoder.json" \
    --merges "$gpt2_dir/vocab.bpe" --out "$work/gpt2" "$work/corpus.txt"
gpt2_wall=$WALL gpt2_cpu=$CPU
printf '  %-38s %8s MB/s wall  %8s MB/s cpu  (incl. loading the BPE files; target >= 5)\n' \
    "strata pack --tokenizer gpt2" "$(rate "$bytes" "$gpt2_wall")" "$(rate "$bytes" "$gpt2_cpu")"

# Hugging Face tokenizer.json packers against the GPT-2 packer, each a whole
# `strata pack` on one core: on the text once (loading a 9 MB tokenizer.json
# costs ~0.8 s of it) and on the text repeated to >= 64 MB (the steady rate).
if hf_dir="$("$here/fetch_hf_tokenizers.sh" 2>/dev/null)"; then
    timed "$strata" pack --tokenizer gpt2 --vocab "$gpt2_dir/encoder.json" \
        --merges "$gpt2_dir/vocab.bpe" --out "$work/gpt2big" "$work/big.txt"
    big_cpu=$CPU
    printf '  %-44s %8s MB/s cpu on %s MB\n' "strata pack --tokenizer gpt2" "$(rate "$big" "$CPU")" "$(mb "$big")"
    for m in llama3 qwen3 llama2; do
        timed "$strata" pack --tokenizer "$hf_dir/$m/tokenizer.json" --out "$work/hf-$m" \
            "$work/corpus.txt"
        once_cpu=$CPU
        timed "$strata" pack --tokenizer "$hf_dir/$m/tokenizer.json" --out "$work/hf-$m" \
            "$work/big.txt"
        printf '  %-44s %8s MB/s cpu on %s MB (%.2fx gpt2), %s MB/s on %s MB (%.2fx gpt2)\n' \
            "strata pack --tokenizer $m/tokenizer.json" "$(rate "$bytes" "$once_cpu")" \
            "$(mb "$bytes")" "$(awk -v a="$gpt2_cpu" -v b="$once_cpu" 'BEGIN{print a/b}')" \
            "$(rate "$big" "$CPU")" "$(mb "$big")" "$(awk -v a="$big_cpu" -v b="$CPU" 'BEGIN{print a/b}')"
    done
else
    echo "  Hugging Face tokenizers: tests/fetch_hf_tokenizers.sh failed; skipped" >&2
fi

command -v node >/dev/null || {
    echo "  JavaScript reference: node not found (apt-get install nodejs); no ratio" >&2
    exit 0
}
timed node "$here/fixtures/gpt2_reference_encode.js" "$gpt2_dir/gpt-3-encoder" \
    "$work/corpus.txt" "$work/ref.u16"
js_s=$(sed -n 's/.*"seconds":\([0-9.e-]*\).*/\1/p' "$work/last.out")
js_cpu=$(sed -n 's/.*"cpu_seconds":\([0-9.e-]*\).*/\1/p' "$work/last.out")
printf '  %-38s %8s MB/s wall  %8s MB/s cpu  (encode() alone)\n' \
    "reference gpt-3-encoder (node $(node --version))" "$(rate "$bytes" "$js_s")" \
    "$(rate "$bytes" "$js_cpu")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }'; }
echo "  gpt2: strata pack (whole command) vs the reference's encode(): $(ratio "$js_s" "$gpt2_wall")x" \
    "by wall time, $(ratio "$js_cpu" "$gpt2_cpu")x by CPU time"

if command -v h5dump >/dev/null; then
    h5dump -b LE -d /tokens -o "$work/strata.u16" "$work/gpt2.h5" >/dev/null
    # strata's shard starts with the document's EOT (50256 = 0xc450)
    if { printf '\x50\xc4'; cat "$work/ref.u16"; } | cmp -s - "$work/strata.u16"; then
        echo "  gpt2: strata's tokens equal the reference's on all $(($(stat -c %s "$work/ref.u16") / 2)) tokens"
    else
        echo "  gpt2: TOKENS DIFFER from the reference's" >&2
        exit 1
    fi
fi
