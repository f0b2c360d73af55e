"""Trust-region reflective ("trf", scipy's default least-squares method), with bounds.

Each trip evaluates one trial point (residuals and Jacobian together); the step is the
reverse-communication form of scipy's ``trf_no_bounds`` / ``trf_bounds``: a trial is
accepted if it lowers the cost, the radius follows the ratio of actual to predicted
reduction, and the trust-region solve for a new radius reuses the iterate's SVD (computed
once per iterate). With bounds, the problem is scaled by the Coleman-Li vector and the
step is the best of the cut-back, reflected and Cauchy steps; every trial lies strictly
inside the box. Matrix-free (``options={"jac": "matvec"}``, no bounds), the trust-region
problem is solved on the 2-D subspace of the gradient and a Gauss-Newton direction found
by conjugate gradients on Jacobian-vector products (scipy's ``tr_solver="lsmr"`` way).

References:
  M. A. Branch, T. F. Coleman, Y. Li, SIAM J. Sci. Comput. 21(1), 1999 (the method);
  scipy.optimize.least_squares (the rules reproduced here, so nfev compares one to one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxopt_dict._method import Box, Evaluation, StepOutcome, Stepper
from jaxopt_dict._result import RUNNING, Status
from jaxopt_dict._tree import ravel, vary_over_manual_axes
from jaxopt_dict.lsq_methods._common import (
    Factors,
    LsqAux,
    check_termination,
    cl_scaling,
    evaluate_quadratic,
    factorize,
    init_from_step,
    jac_scale,
    make_strictly_feasible,
    resolvable,
    safe_div,
    select_step,
    solve_trust_region,
    subspace,
    update_tr_radius,
    xtol_met,
)


class TrfState(NamedTuple):
    x: jax.Array  # the iterate, flat
    cost: jax.Array
    J: jax.Array  # their Jacobian, m x n
    g: jax.Array  # the cost's gradient, J^T f
    scale_inv: jax.Array  # 1 / x_scale (x_scale="jac": the Jacobian's column norms)
    Delta: jax.Array  # trust-region radius (in scaled variables)
    alpha: jax.Array  # the last Levenberg-Marquardt parameter (the next solve's start)
    factors: Factors  # SVD of the scaled (augmented) Jacobian at the iterate
    basis: jax.Array | None  # matrix-free: the 2-D subspace S (n x 2); J is then J S
    theta: jax.Array  # step-back factor from the bounds (max(0.995, 1 - ||g v||_inf))
    # The pending trial, from x:
    step_norm: jax.Array
    step_h_norm: jax.Array
    predicted: jax.Array


def _scaling(state_x, g, scale_inv, box_flat):
    """(d, diag_h, g_h, g_norm): the variables' scaling and the scaled gradient's inf-norm
    (Coleman-Li with bounds; ``x_scale`` alone without)."""
    scale = 1 / scale_inv
    if box_flat is None:
        return scale, None, scale * g, jnp.max(jnp.abs(g))
    lower, upper = box_flat
    v, dv = cl_scaling(state_x, g, lower, upper)
    g_norm = jnp.max(jnp.abs(g * v))
    v = jnp.where(dv != 0, v * scale_inv, v)
    d = jnp.sqrt(v) * scale
    diag_h = g * dv * scale
    return d, diag_h, d * g, g_norm


def make(opts: Mapping[str, Any]) -> Stepper:
    ftol, xtol, gtol = opts["ftol"], opts["xtol"], opts["gtol"]
    scale_by_jac = opts["x_scale_jac"]

    def step(state: TrfState | None, ev: Evaluation, box: Box | None, first):
        x_new, unravel = ravel(ev.x)
        aux: LsqAux = ev.aux
        matvec = aux.B is not None  # options["jac"] = "matvec": J B, no J
        f_new, g_new = aux.f, aux.g
        if aux.B is not None:
            basis_new, J_new = subspace(aux.J, aux.B)
        else:
            J_new, basis_new = aux.J, None
        m, k = J_new.shape
        n = x_new.size
        dtype = J_new.dtype  # x's and the residuals' promoted dtype
        x_new = x_new.astype(dtype)
        box_flat = None if box is None else (ravel(box.lower)[0], ravel(box.upper)[0])
        if state is None:  # init: only its types matter below the first trip's selects
            # (varying over a shard_map's axes, as the loop's carry is: the cond below)
            state = vary_over_manual_axes(
                _placeholder(m, n, k, dtype, box_flat is not None, matvec)
            )
        cost_new = ev.f.astype(dtype)

        # The trial's verdict (meaningless on the first trip: ``first`` overrides it).
        finite = jnp.isfinite(cost_new)
        actual = state.cost - cost_new
        Delta_new, ratio = update_tr_radius(
            state.Delta,
            actual,
            state.predicted,
            state.step_h_norm,
            state.step_h_norm > 0.95 * state.Delta,
        )
        stop = check_termination(
            actual,
            state.cost,
            ratio,
            resolvable(ftol, ev.x),
            xtol_met(state.step_norm, state.x, x_new - state.x, xtol, ev.x),
        )
        stop = jnp.where(finite & ~first, stop, RUNNING)
        alpha = jnp.where(finite, state.alpha * safe_div(state.Delta, Delta_new), state.alpha)
        Delta = jnp.where(finite, Delta_new, 0.25 * state.step_h_norm)
        accepted = finite & (actual > 0) & ~first
        new_point = first | accepted

        pick = lambda new, old: jnp.where(new_point, new, old)
        x, cost = pick(x_new, state.x), pick(cost_new, state.cost)
        J = pick(J_new, state.J)
        g = pick(g_new, state.g)
        basis = None if basis_new is None else pick(basis_new, state.basis)
        if scale_by_jac:
            scale_inv = jnp.where(
                first, jac_scale(J_new), pick(jac_scale(J_new, state.scale_inv), state.scale_inv)
            )
        else:
            scale_inv = jnp.broadcast_to(1 / jnp.asarray(opts["x_scale"], dtype), (n,))

        d, diag_h, g_h, g_norm = _scaling(x, g, scale_inv, box_flat)
        # The first trip: the radius from x0 (scaled), alpha = 0.
        if box_flat is None:
            Delta0 = jnp.linalg.norm(x * scale_inv)
        else:
            v, dv = cl_scaling(x, g, *box_flat)
            v = jnp.where(dv != 0, v * scale_inv, v)
            Delta0 = jnp.linalg.norm(x * scale_inv / jnp.sqrt(v))
        usable = jnp.isfinite(Delta0) & (Delta0 > 0)  # x0 on a bound: v = 0
        Delta = jnp.where(first, jnp.where(usable, Delta0, 1.0), Delta)
        alpha = jnp.where(first | ~jnp.isfinite(alpha), 0.0, alpha)
        # scipy tests gtol at the top of its loop, after a break on ftol/xtol too: a small
        # gradient at the new iterate wins.
        stop = jnp.where(new_point & (g_norm < gtol), Status.CONVERGED, stop)

        J_h = J if matvec else J * d  # matrix-free: x_scale is 1 (the front door says)
        if box_flat is None:
            augmented, rhs = J_h, f_new  # (factorized at a new iterate only)
        else:
            assert diag_h is not None
            augmented = jnp.concatenate([J_h, jnp.diag(jnp.sqrt(diag_h))])
            rhs = jnp.concatenate([f_new, jnp.zeros(n, dtype)])
        factors = jax.lax.cond(new_point, lambda: factorize(augmented, rhs), lambda: state.factors)
        theta = pick(jnp.maximum(0.995, 1 - g_norm), state.theta)

        # The rank test counts J's own rows, as scipy's trf_bounds does (m, not the m + n
        # rows of the augmented system): with bounds and m < n it decides otherwise.
        p_h, alpha = solve_trust_region(factors, Delta, alpha, J_h.shape[0], k)
        if basis is not None:  # the step in the subspace, then in x
            predicted = -evaluate_quadratic(J_h, basis.T @ g_h, p_h)
            step_h = step_x = basis @ p_h
            trial = x + step_x
        elif box_flat is None:
            step_h = p_h
            step_x = d * p_h
            predicted = -evaluate_quadratic(J_h, g_h, p_h)
            trial = x + step_x
        else:
            lower, upper = box_flat
            step_x, step_h, predicted = select_step(
                x, J_h, diag_h, g_h, d * p_h, p_h, d, Delta, lower, upper, theta
            )
            trial = x + step_x  # made strictly feasible below, in x's own dtypes
        new_state = TrfState(
            x=x,
            cost=cost,
            J=J,
            g=g,
            scale_inv=scale_inv,
            Delta=Delta,
            alpha=alpha,
            factors=factors,
            basis=basis,
            theta=theta,
            step_norm=jnp.linalg.norm(step_x),
            step_h_norm=jnp.linalg.norm(step_h),
            predicted=predicted,
        )
        trial_tree = optax.tree.cast_like(unravel(trial), ev.x)
        if box is not None:  # strictly inside after rounding to each leaf's dtype
            trial_tree = jax.tree.map(
                lambda t, lo, hi: make_strictly_feasible(
                    t, lo.astype(t.dtype), hi.astype(t.dtype), 0
                ),
                trial_tree,
                box.lower,
                box.upper,
            )
        return new_state, trial_tree, StepOutcome(accepted=accepted, stop=stop)

    return Stepper(
        init_from_step(step), step, step_starts=True, rejects_nonfinite=True, own_stopping=True
    )


def _placeholder(m: int, n: int, k: int, dtype, bounded: bool, matvec: bool) -> TrfState:
    zero = jnp.zeros((), dtype)
    rows = m + n if bounded else m
    r = min(rows, k)
    return TrfState(
        x=jnp.zeros(n, dtype),
        cost=zero,
        J=jnp.zeros((m, k), dtype),
        g=jnp.zeros(n, dtype),
        scale_inv=jnp.ones(n, dtype),
        Delta=zero,
        alpha=zero,
        factors=Factors(jnp.zeros(r, dtype), jnp.zeros(r, dtype), jnp.zeros((k, r), dtype)),
        basis=jnp.zeros((n, min(2, n)), dtype) if matvec else None,
        theta=zero,
        step_norm=zero,
        step_h_norm=zero,
        predicted=zero,
    )
