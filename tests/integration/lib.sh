# Shared by the integration tests: a scratch directory, corpora found on
# every Debian machine, and checks on exit status and messages.
set -euo pipefail
: "${STRATA:?set STRATA to the strata binary}"
: "${STRATA_SOURCE_DIR:?set STRATA_SOURCE_DIR to the repository}"
: "${STRATA_WORK:=$(mktemp -d)}"
rm -rf "$STRATA_WORK"
mkdir -p "$STRATA_WORK"
cd "$STRATA_WORK"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PYTHON=/usr/bin/python3 # Debian's, with h5py and numpy (not a pyenv one on PATH)
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)

# FAMILY=llama runs a test's configs as the llama family (tests/integration/
# test_llama_family.sh does): apply_family adds these keys to the [model]
# section of a config, every llama feature switched on.
# PRECISION=bf16 likewise runs them with bf16 matmuls (test_bf16.sh).
apply_family() { # config.ini
  if [ "${PRECISION:-fp32}" = bf16 ]; then
    sed -i '/^\[train\]/a precision = bf16' "$1"
    grep -q '^precision = bf16' "$1" || fail "$1 has no [train] section for precision = bf16"
  fi
  [ "${FAMILY:-gpt2}" = llama ] || return 0
  sed -i '/^\[model\]/a family = llama\nn_kv_head = 1\nffn_dim = 96\ntied = false\nqkv_bias = true\nqk_norm = true\nrope_theta = 10000' "$1"
}

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# English prose: the license texts every Debian system carries, then package
# copyright files (sorted, so the corpus is the same on the same system),
# up to about $1 bytes.
english_files() {
  local limit=${1:-4000000} total=0 f size
  for f in /usr/share/common-licenses/* $(ls /usr/share/doc/*/copyright 2>/dev/null | sort); do
    [ -f "$f" ] || continue
    size=$(stat -c %s "$f")
    total=$((total + size))
    echo "$f"
    [ "$total" -lt "$limit" ] || break
  done
}

# C source: the system headers libc6-dev installs.
code_files() {
  local limit=${1:-4000000} total=0 f size
  for f in $(ls /usr/include/*.h /usr/include/*/*.h 2>/dev/null | sort); do
    size=$(stat -c %s "$f")
    total=$((total + size))
    echo "$f"
    [ "$total" -lt "$limit" ] || break
  done
}

# expect_exit CODE REGEX CMD...: CMD must exit with CODE and print exactly one
# line on stderr that matches REGEX.
expect_exit() {
  local want=$1 pattern=$2 got=0
  shift 2
  "$@" >out.log 2>err.log || got=$?
  [ "$got" -eq "$want" ] || fail "'$*' exited $got, expected $want; stderr: $(cat err.log)"
  [ "$(grep -c . err.log)" -eq 1 ] || fail "'$*' printed $(grep -c . err.log) lines on stderr, expected one: $(cat err.log)"
  grep -Eq -- "$pattern" err.log || fail "'$*': message '$(cat err.log)' does not match '$pattern'"
}

# A last metrics record of kind "eval" for the set $2 in file $1: its loss.
last_eval_loss() {
  "$PYTHON" -c "
import json,sys
loss=None
for line in open('$1'):
    r=json.loads(line)
    if r.get('eval')=='$2': loss=r['loss']
print(loss)"
}
