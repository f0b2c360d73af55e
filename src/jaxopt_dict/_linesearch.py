"""Line searches as state machines: each trip of the driver's loop feeds one evaluation in.

``Backtracking`` is Armijo backtracking along a (projected) path. It never evaluates
``fun`` itself; ``advance`` consumes the driver's evaluation at ``trial_point`` and says
whether that point is accepted, or shrinks the step so the next trip tries a shorter one.
With bounds, trial points are ``P(x + a d)`` and the sufficient-decrease test uses the
projected step (Bertsekas 1982, eq. 11), so every trial point lies in the box.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxopt_dict._method import Box, Evaluation
from jaxopt_dict._tree import project

PyTree = Any

ARMIJO_C1 = 1e-4
SHRINK = 0.5


class Backtracking(NamedTuple):
    """Armijo backtracking from ``x`` along ``direction``."""

    x: PyTree
    f: jax.Array
    g: PyTree
    direction: PyTree
    step_size: jax.Array
    trials: jax.Array  # trial points evaluated so far in this search


def backtracking_start(ev: Evaluation, direction: PyTree, step_size: jax.Array) -> Backtracking:
    """A fresh search from the accepted evaluation ``ev``."""
    return Backtracking(
        ev.x, ev.f, ev.g, direction, jnp.asarray(step_size, ev.f.dtype), jnp.asarray(0, jnp.int32)
    )


def backtracking_trial(search: Backtracking, box: Box | None) -> PyTree:
    """The next point to evaluate: ``P(x + step * d)``."""
    return project(optax.tree.add_scale(search.x, search.step_size, search.direction), box)


def backtracking_advance(
    search: Backtracking, ev: Evaluation, maxls: int
) -> tuple[Backtracking, jax.Array, jax.Array]:
    """Consume the evaluation at the last trial point.

    Returns:
      ``(search, accepted, failed)``: on rejection the step is halved for the next trial;
      ``failed`` once ``maxls`` trials were rejected or the step underflowed.
    """
    decrease = optax.tree.vdot(search.g, optax.tree.sub(ev.x, search.x))
    accepted = ev.f <= search.f + ARMIJO_C1 * decrease
    trials = search.trials + 1
    step_size = search.step_size * SHRINK
    failed = ~accepted & ((trials >= maxls) | (step_size == 0))
    return search._replace(step_size=step_size, trials=trials), accepted, failed
