"""Gauss-Newton with a backtracking (Armijo) line search ("gauss-newton").

At each iterate the direction is the least-squares solution of ``J p = -f`` (minimum norm,
from one SVD of J with its columns equilibrated by powers of two; singular values below
``eps * max(m, n) * s_max`` dropped), the step is
halved until the cost decreases by at least ``1e-4 * t * g^T p`` (non-finite trials are
rejected the same way), at most ``maxls`` trials per iteration (matrix-free: the
direction by conjugate gradients on Jacobian-vector products, with the evaluation).

Where J is nearly singular the direction can be huge and still lower the cost (a
saturated ``exp(-x t)`` sent x from 75 to 2e8), and scipy's ``xtol``, relative to
``||x||``, would then stop the next step at a point that is not stationary, as a
success. So a step longer than ``1000 * max(||x||, 1)`` is first shortened to that
length (Dennis & Schnabel's ``maxstep``, relative to the iterate so that a far solution
is still reached in a few steps), and a direction nearly orthogonal to the gradient
(in the equilibrated variables; in x's own units too where the step is beyond that
length) gives way, with the Jacobian formed, to the one over the singular values J,
unscaled, resolves to ``sqrt(eps)``.

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
    equilibrated_factors,
    init_from_step,
    resolvable,
    safe_div,
    scaled_norm,
    times_pow2,
    xtol_met,
)

_ARMIJO = 1e-4
_MAX_STEP = 1e3  # Dennis & Schnabel's maxstep, in units of max(||x||, 1)


class GaussNewtonState(NamedTuple):
    x: jax.Array
    cost: jax.Array
    g: jax.Array
    direction: jax.Array  # the Gauss-Newton direction at x
    t: jax.Array  # the step length of the pending trial
    slope: jax.Array  # g^T direction (< 0)
    trials: jax.Array  # trials of this iteration's search so far


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
            state = GaussNewtonState(vector, zero, vector, vector, zero, zero, jnp.asarray(0))
            state = vary_over_manual_axes(state)  # as the loop's carry is (shard_map)
        cost_new = ev.f.astype(dtype)
        finite = jnp.isfinite(cost_new)
        decrease = state.cost - cost_new
        sufficient = finite & (cost_new <= state.cost + _ARMIJO * state.t * state.slope)
        accepted = sufficient & ~first
        new_point = first | accepted
        trials = jnp.where(new_point, 0, state.trials + 1)
        failed = ~new_point & (trials >= maxls)

        # xtol on the step as evaluated (rounded to x's dtype): a search whose trials no
        # longer move x has stalled, accepted or not.
        moved = x_new - state.x
        stalled = ~first & xtol_met(jnp.linalg.norm(moved), state.x, moved, xtol, ev.x)
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

        max_step = _MAX_STEP * jnp.maximum(scaled_norm(x), 1.0)

        def direction():
            eps = jnp.finfo(dtype).eps

            def minimum_norm(factors, cut, k=None):
                """``-J^+ f`` over the singular values above ``cut`` times the largest, from
                the ``Factors`` of ``J D^-1`` with ``D = 2^k`` (then ``p = D^-1 p'``)."""
                uf, s, V = factors
                V = V if k is None else times_pow2(V, -k[:, None])
                return -V @ jnp.where(s > cut * s[0], safe_div(uf, s), 0)

            # J's columns equilibrated first, each by the power of two nearest its largest
            # entry (exact): the rank cut then compares each variable's column with its
            # own scale, not with the largest column's, which dropped a variable whose
            # column was eps times smaller than another's (float32 Misra1a: b1's column is
            # 2e-7 of b2's, and the solve ended at XTOL, a success far from the minimum).
            # (Where J has full rank the Gauss-Newton step does not depend on it.)
            k, scaled, unscaled = equilibrated_factors(J_new, f_new)
            p = minimum_norm(scaled, eps * max(m, n), k)
            # Nearly orthogonal to the gradient (the angle condition, Nocedal & Wright
            # eq. 3.12, fails): p runs along a direction that barely changes the
            # residuals (a saturated exp(-x t) column). Such steps barely lower the cost,
            # so scipy's ftol stopped on them with a gradient far from 0. Then the
            # directions J itself resolves to sqrt(eps) are taken instead (a second SVD,
            # of J unscaled, from the same QR; a single fit computes it only then). The
            # angle is measured in the equilibrated variables (D p against D^-1 g), which
            # is free of the variables' units; in x's own units only for a step longer
            # than the cap below (a saturated column's step: capped, it would shrink the
            # other variables' steps with it and stop FTOL; a long step along a column
            # that is merely small is right, and the cap takes it in a few steps). Either
            # way ||J p||^2 = -g^T p (the ftol test's model above).
            slope, length = -(g_new @ p), scaled_norm(p)
            cosine = safe_div(slope, scaled_norm(g_new) * length)
            scaled_g, scaled_p = times_pow2(g_new, -k), times_pow2(p, k)  # D^-1 g, D p
            scaled_cosine = safe_div(slope, scaled_norm(scaled_g) * scaled_norm(scaled_p))
            barely = (scaled_cosine < jnp.sqrt(eps)) | (
                (cosine < jnp.sqrt(eps)) & (length > max_step)
            )
            resolved = lambda: minimum_norm(unscaled(), jnp.sqrt(eps))
            return jax.lax.cond(barely, resolved, lambda: p)

        if B is not None:  # conjugate gradients found it with the evaluation
            d = pick(B[:, 1], state.direction)
        else:
            d = jax.lax.cond(new_point, direction, lambda: state.direction)
        length = scaled_norm(d)
        full = jnp.where(length > max_step, max_step / length, 1.0)  # Alg. A6.3.1
        t = jnp.where(new_point, full, 0.5 * state.t)
        new_state = GaussNewtonState(x, cost, g, d, t.astype(dtype), g @ d, trials)
        return new_state, unravel(x + t * d), StepOutcome(accepted, failed, stop=stop)

    return Stepper(
        init_from_step(step), step, step_starts=True, rejects_nonfinite=True, own_stopping=True
    )
