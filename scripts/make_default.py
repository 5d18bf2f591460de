"""Rebuild the embedded default data (data/*.h5) and BadNet (models/bd_net*).

    python scripts/make_default.py                 # everything
    python scripts/make_default.py --robust-only   # only the robust detection examples

Deterministic: rerunning it writes the same images and labels and, on the
TensorFlow CPU backend, the same weights.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aegis_tf.defaults import build_default, build_robust_defaults  # noqa: E402

if __name__ == "__main__":
    if "--robust-only" in sys.argv:
        for name, res in build_robust_defaults().items():
            print(f"models/{name}.keras on data/test.h5: clean accuracy {res['clean_acc']:.4f}, "
                  f"ASR {res['asr']:.4f}, L2 PGD (eps 0.5, 7 steps) accuracy {res['adv_acc']:.4f}")
        sys.exit(0)
    result = build_default()
    print(f"default BadNet on data/test.h5: clean accuracy {result['clean_acc']:.4f}, "
          f"ASR on data/bd_test.h5 {result['asr']:.4f}")
    if result["clean_acc"] < 0.9 or result["asr"] < 0.9:
        sys.exit("default BadNet is below 90% clean accuracy or 90% ASR")
    for name, res in build_robust_defaults().items():
        print(f"models/{name}.keras on data/test.h5: clean accuracy {res['clean_acc']:.4f}, "
              f"ASR {res['asr']:.4f}, L2 PGD (eps 0.5, 7 steps) accuracy {res['adv_acc']:.4f}")
