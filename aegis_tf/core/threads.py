"""Caps on the BLAS and OpenMP thread pools of scikit-learn's reducers and clusterers.

t-SNE and mean shift start one thread per core by default; on a small
machine that is already busy (or inside a thread pool of our own) they
oversubscribe the cores and a 5-second reduction takes minutes. threadpoolctl
ships with scikit-learn.
"""

import os

__all__ = ["limit_threads", "cap_process_threads", "THREAD_VARIABLES"]


def limit_threads(n=1):
    """A context manager limiting native thread pools to ``n`` threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


# The environment variables that size the math thread pools of a process that has not
# imported its numerical libraries yet: OpenMP/BLAS (numpy, scikit-learn) and TensorFlow's
# intra- and inter-op pools. XLA's CPU backend (Keras on JAX) has no such variable: under
# JAX only the OpenMP/BLAS pools are capped.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                    "TF_NUM_INTEROP_THREADS")


def cap_process_threads(n):
    """Cap this process's math thread pools at ``n`` threads, through the environment.

    Call it first thing in a fresh worker process, before NumPy, TensorFlow or JAX is
    imported (they read these variables once, at start-up); the scan workers of
    ``aegis scan-zoo`` do, so that N workers x ``n`` threads never exceed the cores.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1. Received: {n}")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
