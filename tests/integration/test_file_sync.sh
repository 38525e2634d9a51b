#!/usr/bin/env bash
# Every file strata replaces follows io/file.h's one durability rule, seen in
# the system calls (strace): the data is fsync'd before the rename that
# publishes it, the directory is fsync'd after it, and a directory strata
# creates has its parent fsync'd. Checked for the writers of token shards and
# manifests (pack), checkpoints (import), Hugging Face directories (export)
# and reports (report).
source "$(dirname "$0")/lib.sh"
command -v strace >/dev/null || fail "strace is not installed (apt-get install strace)"

W=$PWD
fixtures=$STRATA_SOURCE_DIR/tests/fixtures

# traced NAME CMD...: runs CMD under strace into NAME.trace.
traced() {
  local name=$1
  shift
  # LeakSanitizer cannot run under ptrace: leaks are other tests' to find
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 strace -f -y -qq -e trace=fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat \
    -o "$W/$name.trace" "$@" >"$W/$name.out" 2>&1 || fail "$name: '$*' failed: $(cat "$W/$name.out")"
}

# check NAME MIN_RENAMES: in NAME.trace every successful rename of a
# temporary file is preceded by an fsync of that file and followed, before
# the next rename, by an fsync of the target's directory; every directory
# made is followed by an fsync of its parent.
check() {
  python3 - "$W/$1.trace" "$2" <<'EOF' || fail "$1: the durability rule is broken (trace in $W/$1.trace)"
import os, re, sys
lines = [l for l in open(sys.argv[1]) if "= 0" in l]
want = int(sys.argv[2])
synced = []  # paths fsync'd, in order
renames = mkdirs = 0
def fsynced_after(i, path):
    for l in lines[i + 1:]:
        m = re.search(r"f(?:data)?sync\(\d+<([^>]*)>\)", l)
        if m and m.group(1) == path:
            return True
        if re.search(r"\brename", l):
            return False
    return False
for i, l in enumerate(lines):
    m = re.search(r"f(?:data)?sync\(\d+<([^>]*)>\)", l)
    if m:
        synced.append(m.group(1))
        continue
    m = re.search(r"rename(?:at2?)?\((?:AT_FDCWD, )?\"([^\"]+)\", (?:AT_FDCWD, )?\"([^\"]+)\"", l)
    if m:
        src, dst = m.group(1), m.group(2)
        assert os.path.isabs(src) and os.path.isabs(dst), l
        assert os.path.basename(src).startswith("."), "temporary name is not a dotfile: " + l
        assert src in synced, "renamed before its data was fsync'd: " + l
        assert fsynced_after(i, os.path.dirname(dst)), "directory not fsync'd after: " + l
        renames += 1
        continue
    m = re.search(r"mkdir(?:at)?\((?:AT_FDCWD, )?\"([^\"]+)\"", l)
    if m:
        assert fsynced_after(i, os.path.dirname(m.group(1).rstrip("/"))), "parent not fsync'd: " + l
        mkdirs += 1
assert renames >= want, f"{renames} renames, expected at least {want}"
print(f"{os.path.basename(sys.argv[1])}: {renames} files published, {mkdirs} directories made, all durable")
EOF
}

# pack: five shards and their manifest.
mkdir -p "$W/data"
traced pack "$STRATA" pack --tokenizer byte --shard-tokens 4000 --out "$W/data/x" \
  "$STRATA_SOURCE_DIR/README.md"
check pack 6

# import: a checkpoint (HDF5 written under the temporary name, then published).
traced import "$STRATA" import --from llmc "$fixtures/llmc_tiny.bin" --out "$W/tiny.h5"
check import 1

# export --to hf into directories that do not exist yet (mkdir -p).
traced export "$STRATA" export --to hf "$W/tiny.h5" --out "$W/hub/a/b"
check export 2
grep -q 'mkdir("'"$W"'/hub/a/b"' "$W/export.trace" || fail "export did not create hub/a/b"

# report: summary.md and report.gp in a new directory.
printf '{"step": 10, "tokens": 640, "loss": 3.5, "lr": 0.001}\n' >"$W/m.jsonl"
printf '{"step": 20, "tokens": 1280, "loss": 3.25, "lr": 0.001}\n' >>"$W/m.jsonl"
traced report "$STRATA" report "$W/m.jsonl" --out "$W/rep/new" --no-plots
check report 2
echo "PASS: test_file_sync"
