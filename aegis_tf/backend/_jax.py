"""JAX implementations (jax.grad over model.stateless_call)."""


def enable_determinism():
    """JAX ops are deterministic on CPU; GPU reductions may still vary slightly."""
