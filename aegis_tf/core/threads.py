"""Caps on the BLAS and OpenMP thread pools of scikit-learn's reducers and clusterers.

t-SNE and mean shift start one thread per core by default; on a small
machine that is already busy (or inside a thread pool of our own) they
oversubscribe the cores and a 5-second reduction takes minutes. threadpoolctl
ships with scikit-learn.
"""

__all__ = ["limit_threads"]


def limit_threads(n=1):
    """A context manager limiting native thread pools to ``n`` threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)
