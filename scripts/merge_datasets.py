"""Merge two 10-class ``.npz`` data sets into one 20-class set (the issue-16 scale model).

    python scripts/merge_datasets.py ../shared/datasets/mnist.npz ../shared/datasets/fashion_mnist.npz \
        out/data/mnist_fashion20.npz --train-size 20000

The second set's labels are shifted by the first set's class count (MNIST digits
0-9, Fashion-MNIST items 10-19). Both sets must have the same image shape.
``--train-size N`` keeps the first N training images of each set, so the merged
training set has 2N images, interleaved (one of each set in turn) so that any
prefix holds both. The test sets are merged whole. Written atomically.
"""

import argparse
import os
import sys

import numpy as np

KEYS = ("x_train", "y_train", "x_test", "y_test")


def load(path):
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in KEYS if k not in f]
        if missing:
            sys.exit(f"error: {path} lacks {', '.join(missing)}; expected an .npz with {', '.join(KEYS)}")
        return {k: f[k] for k in KEYS}


def interleave(a, b):
    n = min(len(a), len(b))
    head = np.empty((2 * n,) + a.shape[1:], a.dtype)
    head[0::2], head[1::2] = a[:n], b[:n]
    return np.concatenate([head, a[n:], b[n:]])


def merge(first, second, train_size=0):
    if first["x_train"].shape[1:] != second["x_train"].shape[1:]:
        sys.exit(f"error: image shapes differ ({first['x_train'].shape[1:]} vs {second['x_train'].shape[1:]})")
    offset = int(first["y_train"].max()) + 1
    out = {}
    for split in ("train", "test"):
        xa, ya, xb, yb = first[f"x_{split}"], first[f"y_{split}"], second[f"x_{split}"], second[f"y_{split}"] + offset
        if split == "train" and train_size:
            xa, ya, xb, yb = xa[:train_size], ya[:train_size], xb[:train_size], yb[:train_size]
        out[f"x_{split}"], out[f"y_{split}"] = interleave(xa, xb), interleave(ya.astype("int64"), yb.astype("int64"))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("out")
    p.add_argument("--train-size", type=int, default=0, help="first N training images of each set (default all)")
    args = p.parse_args(argv)
    merged = merge(load(args.first), load(args.second), args.train_size)
    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **merged)
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(merged['y_train'])} training and {len(merged['y_test'])} test images, "
          f"{int(merged['y_train'].max()) + 1} classes")


if __name__ == "__main__":
    main()
