#!/usr/bin/env bash
# `strata report a.jsonl b.jsonl --out DIR` writes plots that parse (SVG as
# XML, PNG by its signature) and a table whose numbers are the metrics
# files'; bad input exits 2 with file:line, a missing gnuplot exits 1.
set -euo pipefail

: "${STRATA:?path of the strata binary}"
WORK=${STRATA_WORK:-$(mktemp -d)}
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

fail() { echo "FAIL: $*" >&2; exit 1; }
command -v gnuplot >/dev/null || fail "gnuplot is not installed (apt-get install gnuplot-nox)"
command -v xmllint >/dev/null || fail "xmllint is not installed (apt-get install libxml2-utils)"

# Two runs as `strata train` logs them: a step-0 evaluation of the init
# model, training records every 10 steps (the first run with 25 % replay,
# the second with none, so no loss_replay), evaluations every 100 steps.
python3 - <<'EOF'
import json, math, random

def write(path, replay, old_drift, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for name, base in (("old", 3.4172), ("new", 5.2391)):
            f.write(json.dumps({"step": 0, "eval": name, "loss": base,
                                "ppl": math.exp(base)}) + "\n")
        for step in range(10, 401, 10):
            warm = min(1.0, step / 50)
            lr = 3e-5 + (3e-4 - 3e-5) * warm * 0.5 * (1 + math.cos(math.pi * step / 400))
            loss_new = 5.2391 - 2.0 * (1 - math.exp(-step / 120)) + rng.gauss(0, 0.03)
            rec = {"step": step, "tokens": step * 64 * 256, "loss_new": loss_new, "lr": lr,
                   "grad_norm": abs(rng.gauss(0.8, 0.1)), "ms": 900 + rng.random() * 50,
                   "tokens_per_s": 18000 + rng.gauss(0, 500), "mfu": 0.21,
                   "data_ms": 2.5, "comm_ms": 14.0}
            if replay:
                rec["loss_replay"] = 3.45 + rng.gauss(0, 0.05)
                rec["loss"] = (1 - replay) * loss_new + replay * rec["loss_replay"]
            else:
                rec["loss"] = loss_new
            f.write(json.dumps(rec) + "\n")
            if step % 100 == 0:
                old = 3.4172 + old_drift * step / 400 + rng.gauss(0, 0.01)
                new = 5.2391 - 1.7 * (1 - math.exp(-step / 150))
                for name, loss in (("old", old), ("new", new)):
                    f.write(json.dumps({"step": step, "eval": name, "loss": loss,
                                        "ppl": math.exp(loss)}) + "\n")

write("a.jsonl", 0.25, 0.05, 1)
write("b.jsonl", 0.0, 0.6, 2)
EOF

"$STRATA" report a.jsonl b.jsonl --out report >stdout.txt 2>stderr.txt ||
    fail "strata report exited $?: $(cat stderr.txt)"

for plot in loss eval-old eval-new lr tokens_per_s; do
    [ -s "report/$plot.svg" ] || fail "report/$plot.svg missing or empty"
    [ -s "report/$plot.png" ] || fail "report/$plot.png missing or empty"
done
for svg in report/*.svg; do
    xmllint --noout "$svg" || fail "$svg is not well-formed XML"
done
for png in report/*.png; do
    sig=$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')
    [ "$sig" = 89504e470d0a1a0a ] || fail "$png does not start with the PNG signature ($sig)"
done
[ -s report/summary.md ] || fail "report/summary.md missing"
cmp -s stdout.txt report/summary.md || fail "stdout is not the table in summary.md"
grep -q 'a: loss_replay' report/report.gp || fail "run a's loss_replay is not plotted"
grep -q "title 'b'" report/report.gp || fail "run b is not labelled in the plots"

# Every number in the table is the metrics files' value to the printed digits.
python3 - <<'EOF'
import json, math, sys

def load(path):
    train, evals = [], {}
    for line in open(path):
        r = json.loads(line)
        if "eval" in r:
            evals.setdefault(r["eval"], []).append(r)
        else:
            train.append(r)
    return train, evals

def rows(text, header_start):
    lines = text.splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith(header_start))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    out = []
    for l in lines[i + 2:]:
        if not l.startswith("|"):
            break
        out.append(dict(zip(header, [c.strip() for c in l.strip("|").split("|")])))
    return out

def same(cell, value, digits, what):
    if value is None:
        ok = cell == "n/a"
    else:
        ok = cell != "n/a" and abs(float(cell) - value) <= 0.6 * 10 ** -digits
    if not ok:
        sys.exit(f"FAIL: {what}: table has {cell}, metrics give {value}")

md = open("report/summary.md").read()
runs = {r["run"]: r for r in rows(md, "| run | final step")}
evals = {(r["run"], r["eval set"]): r for r in rows(md, "| run | eval set")}
if sorted(runs) != ["a", "b"]:
    sys.exit(f"FAIL: runs in the table: {sorted(runs)}")
if len(evals) != 4:
    sys.exit(f"FAIL: eval rows: {sorted(evals)}")

for run in ("a", "b"):
    train, ev = load(f"{run}.jsonl")
    row = runs[run]
    last = train[-1]
    if int(row["final step"]) != last["step"]:
        sys.exit(f"FAIL: {run} final step {row['final step']} != {last['step']}")
    if int(row["tokens"]) != last["tokens"]:
        sys.exit(f"FAIL: {run} tokens {row['tokens']} != {last['tokens']}")
    same(row["loss"], last["loss"], 4, f"{run} loss")
    same(row["loss_new"], last["loss_new"], 4, f"{run} loss_new")
    same(row["loss_replay"], last.get("loss_replay"), 4, f"{run} loss_replay")
    tps = [r["tokens_per_s"] for r in train]
    same(row["mean tokens/s"], sum(tps) / len(tps), 1, f"{run} mean tokens/s")
    for name, recs in ev.items():
        e = evals[(run, name)]
        base, end = recs[0], recs[-1]
        if int(e["baseline step"]) != 0 or int(e["last step"]) != end["step"]:
            sys.exit(f"FAIL: {run}/{name} steps {e['baseline step']}..{e['last step']}")
        same(e["baseline loss"], base["loss"], 4, f"{run}/{name} baseline")
        same(e["last loss"], end["loss"], 4, f"{run}/{name} last")
        same(e["delta"], end["loss"] - base["loss"], 4, f"{run}/{name} delta")
    same(row["forgetting"], ev["old"][-1]["loss"] - ev["old"][0]["loss"], 4, f"{run} forgetting")
    same(row["learning"], ev["new"][0]["loss"] - ev["new"][-1]["loss"], 4, f"{run} learning")

# 25 % replay forgot less than none, as the synthetic runs were made.
if not float(runs["a"]["forgetting"]) < float(runs["b"]["forgetting"]):
    sys.exit("FAIL: forgetting column out of order")
EOF

# Bad input: one line naming the file (and the line), exit 2.
expect_exit() { # expected-status stderr-must-contain command...
    local want=$1 text=$2 rc=0
    shift 2
    "$@" >out.txt 2>err.txt || rc=$?
    [ "$rc" = "$want" ] || fail "'$*' exited $rc, expected $want: $(cat err.txt)"
    grep -qF -- "$text" err.txt || fail "'$*' said '$(cat err.txt)', expected '$text'"
    [ "$(wc -l <err.txt)" = 1 ] || fail "'$*' printed more than one line: $(cat err.txt)"
}
head -n 5 a.jsonl >bad.jsonl
echo '{"step": 60, "loss": 3.1, "lr": ' >>bad.jsonl
tail -n 3 a.jsonl >>bad.jsonl
: >empty.jsonl
expect_exit 2 "bad.jsonl:6: not valid JSON" "$STRATA" report a.jsonl bad.jsonl --out bad
expect_exit 2 "missing.jsonl: cannot open" "$STRATA" report missing.jsonl --out bad
expect_exit 2 "empty.jsonl: no metrics records" "$STRATA" report empty.jsonl --out bad
expect_exit 2 "--out DIR is required" "$STRATA" report a.jsonl
expect_exit 2 "no metrics file given" "$STRATA" report --out bad
[ ! -e bad ] || fail "bad input still wrote bad/"

# No gnuplot: the table is still written, the command fails naming the package.
expect_exit 1 "apt-get install gnuplot-nox" \
    env PATH=/nonexistent "$STRATA" report a.jsonl --out nognuplot
[ -s nognuplot/summary.md ] || fail "summary.md not written without gnuplot"
echo "ok: strata report"
