#!/usr/bin/python3
"""Builds a multiple-choice cloze set (the JSON Lines file of an [eval.NAME]
kind = choice section) from byte-level token shards, for models trained on
bytes such as the demo's:

    /usr/bin/python3 tests/make_choice_cloze.py --text data/english/train.h5 \\
        --distractors data/code/train.h5 --items 300 --out english_cloze.jsonl

Each item is a 48-byte stretch of --text (whitespace runs made single spaces),
its true next 24 bytes and two 24-byte stretches of --distractors, in an order
drawn from --seed. A model that knows the text's domain picks the true
continuation; one that forgot it drifts towards chance (1/3) or below. The
first --hellaswag items are written with HellaSwag's fields (ctx, endings,
label as a string), the rest as {"context", "choices", "answer"}. The shards
must hold bytes (/tokens attribute tokenizer = "byte"); id 0 separates
documents. Needs h5py and numpy (Debian's python3-h5py).
"""
import argparse
import json
import random

import h5py
import numpy as np


def shard_text(path):
    with h5py.File(path, "r") as f:
        d = f["/tokens"]
        tok = d.attrs.get("tokenizer", b"")
        tok = tok.decode() if isinstance(tok, bytes) else str(tok)
        if tok != "byte":
            raise SystemExit(f"{path}: tokenizer is '{tok}', expected byte")
        ids = np.asarray(d[()], dtype=np.uint8).tobytes()
    docs = ids.split(b"\0")
    return " ".join(" ".join(doc.decode("utf-8", "replace").split()) for doc in docs if doc)


def stretch(rng, text, n, ok):
    for _ in range(100000):
        at = rng.randrange(0, len(text) - n)
        s = text[at:at + n]
        if ok(at, s):
            return at, s
    raise SystemExit(f"no suitable {n}-character stretch found")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", required=True)
    ap.add_argument("--distractors", required=True)
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--hellaswag", type=int, default=0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    text, other = shard_text(a.text), shard_text(a.distractors)
    edges = lambda s: s.isascii() and s[0] != " " and s[-1] != " "  # noqa: E731
    with open(a.out, "w") as f:
        for i in range(a.items):
            at, ctx = stretch(rng, text, 72, lambda at, s: edges(s) and " " not in s[47:49])
            ctx, true = ctx[:48], ctx[48:]
            conts = [true] + [stretch(rng, other, 24, lambda at, s: edges(s))[1] for _ in range(2)]
            order = [0, 1, 2]
            rng.shuffle(order)
            conts = [conts[j] for j in order]
            ans = order.index(0)
            if i < a.hellaswag:  # each continuation becomes " " + ending
                rec = {"ctx": ctx, "endings": conts, "label": str(ans)}
            else:
                rec = {"context": ctx, "choices": conts, "answer": ans}
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
