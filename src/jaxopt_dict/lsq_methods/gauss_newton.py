"""Gauss-Newton with a backtracking (Armijo) line search ("gauss-newton").

At each iterate the direction is the least-squares solution of ``J p = -f`` (minimum
norm in variables scaled so that J's columns have one magnitude, from one SVD; singular
values below ``eps * max(m, n) * s_max`` dropped), the step is halved until the cost
decreases by at least ``1e-4 * t * g^T p`` (non-finite trials are rejected the same way),
at most ``maxls`` trials per iteration (matrix-free: the direction by conjugate gradients
on Jacobian-vector products, with the evaluation). The scaling makes the rank cut
relative to each variable's size: without it a float32 fit with b = (250, 5e-4) lost the
direction of b1 and stalled far from the minimum.

Where J is nearly flat along a direction (a saturated ``exp(-x t)``) that direction can be
huge and still lower the cost (it sent x from 75 to 2e8), and scipy's ``xtol``, relative
to ``||x||``, would then stop the next step at a point that is not stationary, as a
success. So a step longer than ``1000 * max(||x||, 1)`` is shortened to that length
(Dennis & Schnabel's ``maxstep``, relative to the iterate so that a far solution is
still reached in a few steps); and a direction nearly orthogonal to the gradient, or
longer than that with J's columns more than ``1 / sqrt(eps)`` apart, is dropped: x is
evaluated once more (so that each trip factorizes one matrix) and from then on the
direction is the one over the singular values the unscaled J resolves to ``sqrt(eps)``.

Stopping uses scipy's least-squares rules: ``ftol`` on the relative decrease of the cost
where the model agreed with it (scipy's "adequate agreement", trf's ratio > 0.25),
``xtol`` on the step relative to ``||x||`` (also a rejected trial's: the search no longer
moves x; below x's eps, on each coordinate's own: ``_common.xtol_met``), ``gtol`` on the
gradient's inf-norm.

References: J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., sec. 10.3
(Gauss-Newton, eq. 10.23) and sec. 3.1 (Armijo condition, eq. 3.4); J. E. Dennis,
R. B. Schnabel, "Numerical Methods for Unconstrained Optimization and Nonlinear
Equations" (1983), Alg. A6.3.1 (the step shortened to ``maxstep``; their suggested
default is ``1e3 * max(||x0||, 1)`` unscaled, here with x in place of x0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_dict._method import Box, Evaluation, StepOutcome, Stepper
from jaxopt_dict._result import RUNNING, Status
from jaxopt_dict._tree import ravel, vary_over_manual_axes
from jaxopt_dict.lsq_methods._common import (
    factorize,
    init_from_step,
    resolvable,
    safe_div,
    scaled_norm,
    times_pow2,
    xtol_met,
)

_ARMIJO = 1e-4
_MAX_STEP = 1e3  # Dennis & Schnabel's maxstep, in units of max(||x||, 1)


def _max_step(x: jax.Array) -> jax.Array:
    """The longest step taken from x (Dennis & Schnabel's maxstep, relative to x)."""
    return _MAX_STEP * jnp.maximum(scaled_norm(x), 1.0)


class GaussNewtonState(NamedTuple):
    x: jax.Array
    cost: jax.Array
    g: jax.Array
    direction: jax.Array  # the Gauss-Newton direction at x
    t: jax.Array  # the step length of the pending trial
    slope: jax.Array  # g^T direction (< 0)
    trials: jax.Array  # trials of this iteration's search so far
    resolve: jax.Array  # the pending trial is x itself, for the unscaled direction there
    unscaled: jax.Array  # a nearly flat direction was met: unscaled directions from now on


def make(opts: Mapping[str, Any]) -> Stepper:
    ftol, xtol, gtol = opts["ftol"], opts["xtol"], opts["gtol"]
    maxls = opts["maxls"]

    def step(state: GaussNewtonState | None, ev: Evaluation, box: Box | None, first):
        del box  # no bounds (the front door refuses them)
        x_new, unravel = ravel(ev.x)
        J_new, f_new, g_new, B = ev.aux  # B = [g, p_GN] matrix-free, else None
        m, n = J_new.shape[0], x_new.size
        dtype = J_new.dtype  # x's and the residuals' promoted dtype
        x_new = x_new.astype(dtype)
        if state is None:
            zero = jnp.zeros((), dtype)
            vector = jnp.zeros(n, dtype)
            state = GaussNewtonState(
                vector, zero, vector, vector, zero, zero, jnp.asarray(0), *[jnp.asarray(False)] * 2
            )
            state = vary_over_manual_axes(state)  # as the loop's carry is (shard_map)
        cost_new = ev.f.astype(dtype)
        finite = jnp.isfinite(cost_new)
        decrease = state.cost - cost_new
        # A trip that evaluated x again for the unscaled direction (below) is no trial.
        resolving = state.resolve & ~first
        sufficient = finite & (cost_new <= state.cost + _ARMIJO * state.t * state.slope)
        accepted = sufficient & ~first & ~resolving
        new_point = first | accepted
        trials = jnp.where(new_point, 0, jnp.where(resolving, state.trials, state.trials + 1))
        failed = ~new_point & ~resolving & (trials >= maxls)

        # xtol on the step as evaluated (rounded to x's dtype): a search whose trials no
        # longer move x has stalled, accepted or not.
        moved = x_new - state.x
        stalled = ~first & ~resolving & xtol_met(jnp.linalg.norm(moved), state.x, moved, xtol, ev.x)
        # scipy's ftol: a small relative decrease, where the quadratic model agreed with
        # the cost (its ratio > 0.25, as trf's). Along t * p the Gauss-Newton model
        # lowers the cost by t (1 - t / 2) (-g^T p), since ||J p||^2 = -g^T p. A decrease
        # that is small because the model failed is no convergence. With no predicted
        # decrease (p = 0) the ratio is taken as 1, as scipy does.
        predicted = state.t * (1.0 - 0.5 * state.t) * -state.slope
        agreed = (decrease > 0.25 * predicted) | (predicted <= 0)
        ftol_met = accepted & agreed & (decrease < resolvable(ftol, ev.x) * state.cost)
        stop = jnp.where(ftol_met, Status.FTOL, jnp.where(stalled, Status.XTOL, RUNNING))

        pick = lambda new, old: jnp.where(new_point, new, old)
        x, cost = pick(x_new, state.x), pick(cost_new, state.cost)
        g = pick(g_new, state.g)
        stop = jnp.where(new_point & (jnp.max(jnp.abs(g)) < gtol), Status.CONVERGED, stop)

        def direction():
            eps = jnp.finfo(dtype).eps
            # Over J's columns scaled to one magnitude (by powers of two: exact), so that
            # the rank cut is relative to each variable's own scale: unscaled, a fit with
            # b = (250, 5e-4) lost the b1 direction in float32 (its singular value 1e-7 of
            # the largest) and stalled at a gradient of 3, as XTOL. Where J has full rank
            # the direction is the same; where not, it has the least scaled norm.
            column_max = jnp.max(jnp.abs(J_new), axis=0)
            exponent = jnp.frexp(column_max)[1]
            scales = jnp.isfinite(column_max) & (column_max > 0)
            exponent = jnp.where(scales, exponent, 0)
            spread = jnp.max(exponent) - jnp.min(jnp.where(scales, exponent, jnp.max(exponent)))
            # Once a nearly flat direction was met (below): unscaled, over the singular
            # values J resolves to sqrt(eps). (One factorization per trip either way:
            # under vmap a cond is a select, and a second one doubled the time of 1,000
            # vmapped curve fits.)
            unscaled = resolving | state.unscaled
            exponent = jnp.where(unscaled, 0, exponent)
            cut = jnp.where(unscaled, jnp.sqrt(eps), eps * max(m, n))
            uf, s, V = factorize(times_pow2(J_new, -exponent), f_new)
            q = -V @ jnp.where(s > cut * s[0], safe_div(uf, s), 0)
            p = times_pow2(q, -exponent)
            # Two signs that p runs along a direction in which J is nearly flat, so that
            # the step barely lowers the cost and scipy's ftol or xtol stop it far from a
            # stationary point: p nearly orthogonal to the gradient (the angle condition,
            # Nocedal & Wright eq. 3.12, in the scaled variables), or longer than the
            # step cap where J's columns differ by more than 1 / sqrt(eps) (a saturated
            # exp's column, 1e-11 of the others, asked for a step of 5e10). Then x is
            # evaluated again for the unscaled direction (the cap still applies), and
            # the solve keeps to those: a saturated exp stays saturated. Either way
            # ||J p||^2 = -g^T p (ftol's model).
            cosine = safe_div(
                -(g_new @ p), scaled_norm(times_pow2(g_new, -exponent)) * scaled_norm(q)
            )
            long = (scaled_norm(p) > _max_step(x_new)) & (spread > jnp.finfo(dtype).nmant // 2)
            return p, ~unscaled & ((cosine < jnp.sqrt(eps)) | long)

        if B is not None:  # conjugate gradients found it with the evaluation
            d, resolve = pick(B[:, 1], state.direction), jnp.asarray(False)
        else:
            d, resolve = jax.lax.cond(
                new_point | resolving, direction, lambda: (state.direction, jnp.asarray(False))
            )
        max_step = _max_step(x)
        length = scaled_norm(d)
        full = jnp.where(length > max_step, max_step / length, 1.0)  # Alg. A6.3.1
        t = jnp.where(new_point | resolving, full, 0.5 * state.t)
        t = jnp.where(resolve, 0.0, t)
        trial = jnp.where(resolve, x, x + t * d)
        new_state = GaussNewtonState(
            x, cost, g, d, t.astype(dtype), g @ d, trials, resolve, state.unscaled | resolve
        )
        return new_state, unravel(trial), StepOutcome(accepted, failed, stop=stop)

    return Stepper(
        init_from_step(step), step, step_starts=True, rejects_nonfinite=True, own_stopping=True
    )
