"""Armijo backtracking as a state machine (GD, Newton): each trip of the driver's loop
feeds one evaluation in.

The search does not evaluate ``fun`` itself: ``backtracking_advance`` consumes the
driver's evaluation at the last trial point and says whether it is accepted or which
point to try next. With bounds, trial points are ``P(x + a d)`` and the sufficient-decrease
test uses the projected step (Bertsekas 1982, eq. 11), so every trial point lies in the
box. (L-BFGS's strong-Wolfe search is ``methods/lbfgs/more_thuente.py``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxopt_dict._loop import reduction_too_small
from jaxopt_dict._method import Box, Evaluation, StepOutcome, Stepper
from jaxopt_dict._tree import project, promoted, safe_divide, vdot

PyTree = Any

ARMIJO_C1 = 1e-4
# A rejected step is halved, unless the quadratic through f(x), the slope and the rejected
# trial puts the minimizer below SHRINK_MIN of it (then SHRINK_MIN), and from the
# INTERPOLATE_AFTER-th rejection in a row it is cut to that minimizer, kept within
# [SHRINK_MIN, SHRINK_MAX] (Dennis & Schnabel, A6.3.1). Far too long a step (a Newton
# step where the Hessian is nearly singular, a first step at the wrong scale) then shrinks
# by up to 10 per trial, so maxls = 20 trials span 1e20 instead of 1e6. Halving first:
# interpolating from the first rejection took 16% more evaluations on the Moré-Garbow-
# Hillstrom zoo with Newton (459 against 394) and 10% more on 1,000 2-D Rosenbrocks.
SHRINK_MIN = 0.1
SHRINK_MAX = 0.5
INTERPOLATE_AFTER = 3


class Backtracking(NamedTuple):
    """Armijo backtracking from ``x`` along ``direction``."""

    x: PyTree
    f: jax.Array
    g: PyTree
    direction: PyTree
    step_size: jax.Array
    trials: jax.Array  # trial points evaluated so far in this search
    fresh: jax.Array  # started at the method's first-step scale (x0's search, a retry)


def backtracking_start(
    ev: Evaluation, direction: PyTree, step_size: jax.Array | float, fresh: jax.Array | bool
) -> Backtracking:
    """A new search from the accepted evaluation ``ev``."""
    step_size = jnp.asarray(step_size, ev.f.dtype)
    trials = jnp.asarray(0, jnp.int32)
    return Backtracking(ev.x, ev.f, ev.g, direction, step_size, trials, jnp.asarray(fresh))


def backtracking_trial(search: Backtracking, box: Box | None) -> PyTree:
    """The next point to evaluate: ``P(x + step * d)``, each leaf in its own dtype.

    Each leaf computed as standard promotion computes it (the step has f's dtype, float64
    for a tree that mixes float32 and float64 leaves), also under strict promotion, where
    ``optax.tree.add_scale`` refuses to mix them."""

    def leaf(x, d):
        return promoted(jnp.add, x, promoted(jnp.multiply, search.step_size, d)).astype(x.dtype)

    return project(jax.tree.map(leaf, search.x, search.direction), box)


def backtracking_advance(
    search: Backtracking, ev: Evaluation, maxls: int
) -> tuple[Backtracking, jax.Array, jax.Array]:
    """Consume the evaluation at the last trial point.

    Returns:
      ``(search, accepted, failed)``: on rejection the step is cut for the next trial
      (halved, or by the quadratic fit's rule above); ``failed`` once ``maxls`` trials
      were rejected or the step underflowed.
    """
    decrease = vdot(search.g, optax.tree.sub(ev.x, search.x))  # promotes across leaves
    # A trial where f or g is not finite arrives with f = +inf (the driver's rule): it
    # fails this test and is cut like any rejection, halved (the fit has nothing to fit).
    accepted = ev.f <= search.f + ARMIJO_C1 * decrease
    trials = search.trials + 1
    # phi(t) = f at t times the trial step: phi(0) = f, phi'(0) ~ decrease, phi(1) = ev.f.
    # A rejection with decrease < 0 has positive curvature, so the minimizer is in (0, 0.5].
    curvature = ev.f - search.f - decrease
    # (no fit where curvature = 0: +-inf or NaN, as computed; without a derivative there)
    minimizer = jnp.where(
        curvature == 0,
        jax.lax.stop_gradient(-decrease / (2.0 * curvature)),
        -safe_divide(decrease, 2.0 * curvature),
    )
    halve_or_cut = jnp.where(minimizer < SHRINK_MIN, SHRINK_MIN, SHRINK_MAX)
    fit = jnp.clip(minimizer, SHRINK_MIN, SHRINK_MAX)
    shrink = jnp.where(trials >= INTERPOLATE_AFTER, fit, halve_or_cut)
    # 0/0 (no fit) or a trial that was not finite: halve.
    shrink = jnp.where(jnp.isnan(shrink) | ~jnp.isfinite(ev.f), SHRINK_MAX, shrink)
    step_size = search.step_size * shrink.astype(search.step_size.dtype)
    failed = ~accepted & ((trials >= maxls) | (step_size == 0))
    return search._replace(step_size=step_size, trials=trials), accepted, failed


def backtracking_stepper(
    direction: Callable[[Evaluation], PyTree],
    first_step: Callable[[Evaluation, Box | None], jax.Array | float],
    next_step: Callable[[Backtracking, Evaluation, Box | None], jax.Array | float],
    maxls: int,
    ftol: jax.Array | float | None = None,
) -> Stepper:
    """A method that searches along ``direction(ev)`` by Armijo backtracking, starting a
    new search at every accepted point (GD and Newton in line-search mode).

    Args:
      direction: the search direction at an accepted evaluation.
      first_step: the first trial step at x0.
      next_step: the first trial step of the next search, from the finished search and
        the accepted evaluation.
      maxls: trial points per search before it fails.
      ftol: for a ``next_step`` that adapts to past steps (GD's): the solve's ``ftol``.
        A search that did not start at ``first_step``'s scale and ends on a decrease by
        which the driver would stop (``_loop.reduction_too_small``) is not taken: the
        search starts over from its own start point at ``first_step``'s scale, and only
        a decrease that small from there ends the solve (FTOL). Without it, a step
        length run down by noisy trials (float32 f with cancellation, a zigzag across a
        narrow valley) stopped GD with FTOL, as a success, at |g| = 7.6 on a quadratic
        where a new search went on to lower f by 1.8 (and at |g| = 2.8e-4 in float64).
        ``None`` (Newton: every search starts at step 1): no retries.
    """

    def init(ev, box):
        search = backtracking_start(ev, direction(ev), first_step(ev, box), fresh=True)
        return search, backtracking_trial(search, box)

    def step(search: Backtracking, ev, box, first=False):
        step_size = jnp.where(first, first_step(ev, box), next_step(search, ev, box))
        restarted = backtracking_start(ev, direction(ev), step_size, fresh=first)
        old = search
        search, accepted, failed = backtracking_advance(search, ev, maxls)
        if ftol is not None:
            # (ev.f is finite here: a non-finite trial arrives as +inf and is rejected.)
            stalled = accepted & ~old.fresh & reduction_too_small(old.f, ev.f, ftol)
            start = Evaluation(old.x, old.f, old.g)
            again = backtracking_start(start, old.direction, first_step(start, box), fresh=True)
            search = optax.tree.where(stalled, again, search)
            accepted = accepted & ~stalled
        search = optax.tree.where(accepted | first, restarted, search)
        return search, backtracking_trial(search, box), StepOutcome(accepted, failed)

    return Stepper(init, step, uses_ftol=True, step_starts=True, rejects_nonfinite=True)
