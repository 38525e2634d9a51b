#!/usr/bin/env bash
# test_bad_shards.sh — broken shards and streams end `strata inspect` with
# exit 2 and one line naming the file; valid ones with exit 0; nothing ends
# with a signal, a hang or any other status.
#
# Real shards come from `strata pack` (byte tokenizer, deflate, several
# shards and a manifest) and from h5py the way other tools write them
# (64-bit integer attributes, variable-length UTF-8 strings, gzip, uint32,
# contiguous), plus a checkpoint-like file. Each is then damaged byte by
# byte: truncations and random byte changes, most of them in the first
# 8 KiB where HDF5 keeps its metadata, deterministic for a given seed
# (STRATA_FUZZ_SEED, default 1; STRATA_FUZZ_VARIANTS per file, default 80).
set -u
: "${STRATA:?set STRATA to the strata binary}"
: "${STRATA_WORK:=$(mktemp -d)}"
SRC=${STRATA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
W=$STRATA_WORK
rm -rf "$W" && mkdir -p "$W" && cd "$W" || exit 1
RANDOM=${STRATA_FUZZ_SEED:-1}
PER_FILE=${STRATA_FUZZ_VARIANTS:-80}
# In sanitizer builds: HDF5 1.10 itself leaks a few bytes on some damaged
# files; those are the library's leaks, not strata's.
echo "leak:libhdf5" >"$W/lsan.supp"
export LSAN_OPTIONS="suppressions=$W/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
# A damaged size makes HDF5 ask malloc for terabytes: plain malloc returns
# NULL and HDF5 reports an error; AddressSanitizer's must do the same.
export ASAN_OPTIONS="allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# runs `strata inspect ARGS`; checks the exit status is 0 or 2 and that a 2
# comes with exactly one line on stderr naming $1 (the file or stream)
n_ok=0 n_refused=0
inspect() {
    local named=$1
    shift
    timeout 120 "$STRATA" inspect "$@" >out.txt 2>err.txt
    local rc=$?
    case $rc in
    0) n_ok=$((n_ok + 1)) ;;
    2)
        n_refused=$((n_refused + 1))
        local lines
        lines=$(wc -l <err.txt)
        if [ "$lines" -ne 1 ] || ! grep -q "^strata inspect: .*$named" err.txt; then
            fail "inspect $* : exit 2 but stderr is not one line naming $named:"
            head -5 err.txt >&2
        fi
        ;;
    *)
        fail "inspect $* : exit $rc (signal, hang or unexpected status)"
        tail -3 err.txt >&2
        cp "$2" "$W/kept-$(basename "$2")-$rc" 2>/dev/null
        ;;
    esac
    return $rc
}

expect_refused() { # NAMED-IN-MESSAGE NEEDLE ARGS...
    local named=$1 needle=$2
    shift 2
    inspect "$named" "$@"
    local rc=$?
    if [ $rc -ne 2 ]; then
        fail "inspect $* : expected exit 2, got $rc"
    elif ! grep -q -- "$needle" err.txt; then
        fail "inspect $* : message lacks '$needle': $(cat err.txt)"
    fi
}

# ---- real shards -----------------------------------------------------------
bases=()
cat "$SRC"/io/*.c "$SRC"/src/*.c 2>/dev/null | head -c 400000 >corpus.txt
if "$STRATA" pack --tokenizer byte --deflate 4 --shard-tokens 60000 --out packed corpus.txt \
    >pack.log 2>&1 && [ -f packed-00000.h5 ]; then
    bases+=(packed-00000.h5)
    inspect packed.manifest packed.manifest --check --seq-len 256 ||
        fail "a packed stream is refused: $(cat err.txt)"
    grep -q "total" out.txt || fail "inspect of a manifest shows no total"
else
    echo "note: strata pack unavailable ($(tail -1 pack.log)); h5py shards only"
fi

PY=
for p in python3 /usr/bin/python3; do
    if "$p" -c 'import h5py, numpy' 2>/dev/null; then PY=$p && break; fi
done
if [ -n "$PY" ]; then
    "$PY" - <<'EOF' || { echo "FAIL: h5py could not write the test shards"; exit 1; }
import h5py, numpy as np
rng = np.random.default_rng(7)

def shard(path, n=20000, vocab=50257, dtype='u2', chunks=(4096,), docs=True, attrs=None,
          data=None, **kw):
    with h5py.File(path, 'w') as f:
        tokens = data if data is not None else rng.integers(0, vocab, n).astype(dtype)
        if chunks and (tokens.ndim != 1 or len(tokens) < chunks[0]):
            chunks = None
        d = f.create_dataset('tokens', data=tokens, chunks=chunks, **kw)
        a = {'vocab_size': vocab, 'eot_token': vocab - 1, 'tokenizer': 'gpt2',
             'format': 'strata-tokens-1'}
        a.update(attrs or {})
        for k, v in a.items():
            if v is not None:
                d.attrs[k] = v
        if docs:
            f.create_dataset('doc_offsets', data=np.array([0, 5000, 12000], dtype='u8'))

# faithful encodings: h5py defaults (int64 attributes, vlen UTF-8 strings)
shard('h5py-gzip.h5', compression='gzip')
shard('h5py-u32-contig.h5', vocab=100000, dtype='u4', chunks=None)
shard('h5py-fixed-strings.h5', attrs={'tokenizer': np.bytes_('gpt2'),
                                      'format': np.bytes_('strata-tokens-1')})
shard('h5py-int32-attrs.h5', attrs={'vocab_size': np.int32(50257), 'eot_token': np.int32(-1)})

# broken ones
with h5py.File('no-tokens.h5', 'w') as f:
    f.create_dataset('ids', data=np.arange(100, dtype='u2'))
shard('rank2.h5', data=np.zeros((100, 2), 'u2'), chunks=None)
shard('int8.h5', data=np.zeros(1000, 'i1'), vocab=100)
shard('float.h5', data=np.zeros(1000, 'f4'))
shard('empty.h5', data=np.zeros(0, 'u2'), chunks=None, docs=False)
shard('bad-format.h5', attrs={'format': 'strata-tokens-9'})
shard('no-vocab.h5', attrs={'vocab_size': None})
shard('vocab-float.h5', attrs={'vocab_size': 50257.0})
shard('vocab-huge.h5', dtype='u4', attrs={'vocab_size': np.int64(1) << 33})
bad = rng.integers(0, 50257, 20000).astype('u2')
bad[12345] = 60000
shard('token-too-big.h5', data=bad)
shard('lzf.h5', compression='lzf')
shard('bytes.h5', vocab=256, attrs={'tokenizer': 'byte', 'eot_token': 0})

# a checkpoint-like file: strata inspect shows its root attributes and tensors
with h5py.File('ckpt-200.h5', 'w') as f:
    for k, v in {'format': 'strata-ckpt-1', 'step': 200, 'tokens_seen': 409600, 'seed': 1234,
                 'world_size': 2, 'n_layer': 2, 'n_head': 2, 'n_embd': 64,
                 'config': '[model]\nn_layer = 2\n'}.items():
        f.attrs[k] = v
    for n, s in [('wte.weight', (256, 64)), ('wpe.weight', (128, 64)),
                 ('h.0.ln_1.weight', (64,)), ('ln_f.weight', (64,))]:
        f.create_dataset('model/' + n, data=np.zeros(s, 'f4'), chunks=True, fletcher32=True)
EOF
    bases+=(h5py-gzip.h5 h5py-u32-contig.h5 ckpt-200.h5)
    for f in h5py-gzip.h5 h5py-u32-contig.h5 h5py-fixed-strings.h5 h5py-int32-attrs.h5; do
        inspect "$f" "$f" --check || fail "a faithful shard is refused: $(cat err.txt)"
    done
    inspect ckpt-200.h5 ckpt-200.h5 || fail "a checkpoint is refused: $(cat err.txt)"
    grep -q "wte.weight *(256, 64)" out.txt || fail "inspect of a checkpoint lacks its tensors"
    grep -q "step *200" out.txt || fail "inspect of a checkpoint lacks its step"

    expect_refused no-tokens.h5 "no /tokens dataset" no-tokens.h5
    expect_refused rank2.h5 "rank 2, expected 1" rank2.h5
    expect_refused int8.h5 "/tokens is int8, expected uint16 or uint32" int8.h5
    expect_refused float.h5 "/tokens is float32" float.h5
    expect_refused empty.h5 "empty shard" empty.h5
    expect_refused bad-format.h5 "expected 'strata-tokens-1'" bad-format.h5
    expect_refused no-vocab.h5 "no vocab_size attribute" no-vocab.h5
    expect_refused vocab-float.h5 "expected an integer" vocab-float.h5
    expect_refused vocab-huge.h5 "vocab_size attribute is 8589934592" vocab-huge.h5
    expect_refused token-too-big.h5 "token 12345 is 60000, not < vocab_size 50257" \
        token-too-big.h5 --check
    expect_refused lzf.h5 "lzf" lzf.h5 --check
    printf 'h5py-gzip.h5\nbytes.h5\n' >mixed.manifest
    expect_refused bytes.h5 "differs from the stream's first shard" mixed.manifest
else
    echo "note: no python3 with h5py; packed shards only"
fi
[ ${#bases[@]} -gt 0 ] || { echo "FAIL: neither strata pack nor h5py could make shards"; exit 1; }
# at least 240 damaged variants in all, however many base files there are
want=$(((240 + ${#bases[@]} - 1) / ${#bases[@]}))
[ "$PER_FILE" -ge "$want" ] || PER_FILE=$want

# ---- broken files and streams ----------------------------------------------
echo "this is not HDF5" >text.h5
expect_refused text.h5 "not an HDF5 file" text.h5
head -c 3000 "${bases[0]}" >truncated.h5
expect_refused truncated.h5 "truncated.h5" truncated.h5
expect_refused nowhere.h5 "No such file" nowhere.h5
printf '# shards\n%s\nnot-there.h5\n' "${bases[0]}" >missing.manifest
expect_refused "missing.manifest:3" "not-there.h5: No such file" missing.manifest
printf 'self.manifest\n' >self.manifest
expect_refused self.manifest "includes itself" self.manifest
printf '%s\ncycle-b.manifest\n' "${bases[0]}" >cycle-a.manifest
printf 'cycle-a.manifest\n' >cycle-b.manifest
expect_refused cycle-a.manifest "includes itself" cycle-a.manifest
mkdir -p empty-dir && touch empty-dir/readme.txt empty-dir/.hidden.h5 empty-dir/x.val.h5
expect_refused empty-dir "directory has no shards" empty-dir
head -c 2000 /dev/urandom >junk.manifest
printf '\0' >>junk.manifest
expect_refused junk.manifest "not a manifest" junk.manifest
"$STRATA" inspect --seq-len 0 "${bases[0]}" >/dev/null 2>&1
[ $? -eq 2 ] || fail "inspect --seq-len 0 should exit 2"
"$STRATA" inspect >/dev/null 2>&1
[ $? -eq 2 ] || fail "inspect without a path should exit 2"

# ---- damaged copies of real shards -----------------------------------------
variants=0
damaged_ok=$n_ok damaged_refused=$n_refused
for base in "${bases[@]}"; do
    size=$(stat -c %s "$base")
    for ((v = 0; v < PER_FILE; v++)); do
        f=damaged.h5
        if ((v % 4 == 0)); then # truncated
            head -c $(((RANDOM * 32768 + RANDOM) % size)) "$base" >$f
        else # 1 to 3 bytes changed, mostly in the metadata at the front
            cp "$base" $f
            for ((k = 0; k <= v % 3; k++)); do
                if ((v % 3 == 0)); then span=$size; else span=$((size < 8192 ? size : 8192)); fi
                pos=$(((RANDOM * 32768 + RANDOM) % span))
                printf "$(printf '\\%03o' $((RANDOM % 256)))" |
                    dd of=$f bs=1 seek=$pos count=1 conv=notrunc status=none
            done
        fi
        inspect $f $f
        inspect $f $f --check --seq-len 128
        variants=$((variants + 1))
    done
done
echo "damaged: $variants variants of ${#bases[@]} files, inspected twice each:" \
    "$((n_ok - damaged_ok)) exit 0, $((n_refused - damaged_refused)) exit 2"
[ $variants -ge 200 ] || fail "only $variants damaged variants (want >= 200)"

if [ $failures -gt 0 ]; then
    echo "test_bad_shards: $failures failure(s)"
    exit 1
fi
echo "test_bad_shards: ok"
