"""Keras (and TensorFlow) imported without their start-up chatter.

TensorFlow's C++ runtime prints absl/CUDA notices straight to file descriptor 2
on import, and its Python logger warns about retraced functions; they would
drown the one-line errors of the command line and the per-model lines of a zoo
scan. Set ``AEGIS_DEBUG=1`` to see them.
"""

import logging
import os
import sys

__all__ = ["import_keras_quietly"]


def import_keras_quietly():
    """Import and return ``keras`` with file descriptor 2 silenced during the import, and the
    ``tensorflow`` logger at ERROR."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("AEGIS_DEBUG"):
        import keras
    else:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            import keras
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return keras
