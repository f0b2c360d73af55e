"""Only the tree helpers that ``optax.tree`` lacks: tree-valued bounds and finiteness."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxopt_dict._method import Box

PyTree = Any


def project(x: PyTree, box: Box | None) -> PyTree:
    """Clip ``x`` onto the box, leaf by leaf (``optax.tree.clip`` takes scalars only)."""
    if box is None:
        return x
    return jax.tree.map(
        lambda xi, lo, hi: jnp.clip(xi, lo, hi).astype(xi.dtype), x, box.lower, box.upper
    )


def projected_gradient(x: PyTree, g: PyTree, box: Box | None) -> PyTree:
    """``x - P(x - g)``: zero exactly where x is stationary for the box (scipy's rule)."""
    if box is None:
        return g
    return optax.tree.sub(x, project(optax.tree.sub(x, g), box))


def inf_norm(tree: PyTree) -> jax.Array:
    """Largest absolute entry over all leaves."""
    return optax.tree.norm(tree, ord=jnp.inf)


def all_finite(tree: PyTree) -> jax.Array:
    """True when every entry of every leaf is finite."""
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
