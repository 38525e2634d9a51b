#!/usr/bin/env bash
# check_layers.sh [REPO] — the includes of src/, io/, mpi/ and include/strata/
# against the layer table of docs/DESIGN.md (between "<!-- layers -->" and
# "<!-- /layers -->"): a file belongs to the layer whose module list names
# its base name (globs allowed: cli_*), and may include the strata headers
# (include/strata/X.h or io/X.h) of the layers its row lists, and only the
# library headers the library rows give its layer. Prints one line per
# violation and exits 1, or prints a summary and exits 0.
set -euo pipefail
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
design=$repo/docs/DESIGN.md
[ -f "$design" ] || { echo "check_layers: $design not found" >&2; exit 2; }

table=$(awk '/<!-- layers -->/{on=1;next} /<!-- \/layers -->/{on=0} on && /^\| *[a-z]/' "$design")
[ -n "$table" ] || { echo "check_layers: no layer table in $design" >&2; exit 2; }

set -f # module lists hold globs (cli_*), not file names
declare -A allowed libs
layers=()
mods=()   # "glob layer" pairs
while IFS='|' read -r _ kind name members uses _; do
  kind=$(echo "$kind" | xargs); name=$(echo "$name" | xargs)
  members=$(echo "$members" | tr -d '`' | xargs); uses=$(echo "$uses" | xargs)
  case $kind in
  layer)
    layers+=("$name")
    allowed[$name]=" $name $uses "
    for m in $members; do mods+=("$m $name"); done ;;
  library)
    libs[$name]=" $uses " ;;
  *) ;;
  esac
done <<<"$(echo "$table" | sed 's/^| *\(layer\|library\) *|/|\1|/')"

# The layer of a module name (a file's base name without .c/.h), or "".
layer_of() {
  local m=$1 pair glob
  for pair in "${mods[@]}"; do
    glob=${pair% *}
    # shellcheck disable=SC2053
    if [[ $m == $glob ]]; then echo "${pair#* }"; return; fi
  done
  echo ""
}

set +f
bad=0 files=0 edges=0
cd "$repo"
for f in src/*.c io/*.c io/*.h mpi/*.c include/strata/*.h; do
  [ -f "$f" ] || continue
  files=$((files + 1))
  base=$(basename "$f"); base=${base%.*}
  me=$(layer_of "$base")
  if [ -z "$me" ]; then
    echo "$f: module '$base' is in no layer of docs/DESIGN.md"; bad=1; continue
  fi
  while IFS= read -r line; do
    inc=$(echo "$line" | sed -E 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]([^>"]+)[>"].*/\1/')
    case $line in
    *'"'*)
      m=$(basename "$inc"); m=${m%.h}
      to=$(layer_of "$m")
      edges=$((edges + 1))
      if [ -z "$to" ]; then
        echo "$f: includes \"$inc\", a module in no layer"; bad=1
      elif [[ ${allowed[$me]} != *" $to "* ]]; then
        echo "$f: $me layer includes \"$inc\" ($to layer), which docs/DESIGN.md does not allow"
        bad=1
      fi ;;
    *)
      if [ -n "${libs[$inc]+x}" ] && [[ ${libs[$inc]} != *" $me "* ]]; then
        echo "$f: $me layer includes <$inc>, allowed only in:${libs[$inc]}"; bad=1
      fi ;;
    esac
  done < <(grep -E '^[[:space:]]*#[[:space:]]*include' "$f" || true)
done
if [ $bad -ne 0 ]; then exit 1; fi
echo "check_layers: $files files, $edges strata includes, all as docs/DESIGN.md's layers allow"
