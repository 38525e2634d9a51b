#!/usr/bin/env python3
"""Compares the tensors of two strata checkpoints.

  compare_ckpt.py A.h5 B.h5 --bitwise         every /model and /optim tensor byte-identical
  compare_ckpt.py A.h5 B.h5 --tol 1e-5        max|a-b| / max|b| <= tol for every tensor
Prints the worst tensor and exits 1 when the checkpoints differ.
"""
import argparse
import sys

import h5py
import numpy as np


def tensors(f):
    out = {}
    for group in ("model", "optim/m", "optim/v"):
        if group in f:
            for name, d in f[group].items():
                out[f"{group}/{name}"] = d[()]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--bitwise", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--model-only", action="store_true")
    args = ap.parse_args()
    with h5py.File(args.a, "r") as fa, h5py.File(args.b, "r") as fb:
        ta, tb = tensors(fa), tensors(fb)
        sa, sb = int(fa.attrs["step"]), int(fb.attrs["step"])
    if args.model_only:
        ta = {k: v for k, v in ta.items() if k.startswith("model/")}
        tb = {k: v for k, v in tb.items() if k.startswith("model/")}
    if sa != sb:
        print(f"steps differ: {sa} vs {sb}")
        return 1
    if ta.keys() != tb.keys():
        print(f"tensor sets differ: {sorted(ta.keys() ^ tb.keys())[:5]}")
        return 1
    worst, worst_name = 0.0, None
    for name in sorted(ta):
        a, b = ta[name], tb[name]
        if a.shape != b.shape:
            print(f"{name}: shapes differ {a.shape} vs {b.shape}")
            return 1
        if args.bitwise:
            if a.tobytes() != b.tobytes():
                n = int(np.sum(a != b))
                print(f"{name}: {n} of {a.size} values differ (max |a-b| {np.max(np.abs(a - b)):.3g})")
                return 1
            continue
        scale = float(np.max(np.abs(b))) or 1.0
        err = float(np.max(np.abs(a.astype(np.float64) - b))) / scale
        if err > worst:
            worst, worst_name = err, name
    if args.bitwise:
        print(f"bitwise identical: {len(ta)} tensors at step {sa}")
        return 0
    print(f"max relative difference {worst:.3g} ({worst_name}) over {len(ta)} tensors at step {sa}; tolerance {args.tol:g}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
