"""Where the embedded default lives: the digits BadNet's data (``data/*.h5``) and
models (``models/``), by role (:data:`PATHS`). They are built by
:mod:`aegis_tf.attack.embedded` (``scripts/make_default.py``)."""

import os
import sys


def _embedded_root():
    """Where the embedded default lives: $AEGIS_HOME, the source checkout above
    this package, or the share/aegis-tf folder that ``pip install .`` fills."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates = [os.environ.get("AEGIS_HOME"), checkout, os.path.join(sys.prefix, "share", "aegis-tf")]
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "data", "train.h5")):
            return root
    return checkout  # scripts/make_default.py writes it there


ROOT = _embedded_root()
DATA_DIR = os.path.join(ROOT, "data")
MODELS_DIR = os.path.join(ROOT, "models")

# Paths of the embedded default files, by role.
PATHS = {
    "train": os.path.join(DATA_DIR, "train.h5"),
    "valid": os.path.join(DATA_DIR, "valid.h5"),
    "test": os.path.join(DATA_DIR, "test.h5"),
    "bd_valid": os.path.join(DATA_DIR, "bd_valid.h5"),
    "bd_test": os.path.join(DATA_DIR, "bd_test.h5"),
    "bd_net": os.path.join(MODELS_DIR, "bd_net.h5"),
    "bd_weights": os.path.join(MODELS_DIR, "bd_net.weights.h5"),
    "robust_bd_net": os.path.join(MODELS_DIR, "robust_bd_net.keras"),
    "robust_clean_net": os.path.join(MODELS_DIR, "robust_clean_net.keras"),
}
