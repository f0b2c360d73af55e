"""Levenberg-Marquardt ("lm") with MINPACK's trust-region update (``lmder``).

MINPACK's rules, one trial per trip: the step solves ``min ||J p + f||`` within
``||D p|| <= delta`` (``lmpar``: the Levenberg-Marquardt parameter by safeguarded Newton
steps on the secular equation, to 10% of delta), here on one SVD of ``J D^-1`` per iterate
instead of QR factorizations; the radius and parameter follow the ratio of actual to
predicted reduction; a trial is accepted at ratio >= 1e-4; D is the running maximum of
the Jacobian's column norms (``x_scale="jac"``, scipy's default for "lm") or
``1 / x_scale``. Stopping as MINPACK: ftol on the actual and predicted relative
reductions, xtol on the radius relative to ``||D x||``, gtol on the cosine between the
residuals and the Jacobian's columns.

References:
  J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory", Lecture
  Notes in Mathematics 630 (1978), sec. 5-7; J. J. Moré, B. S. Garbow, K. E. Hillstrom,
  "User guide for MINPACK-1", ANL-80-74 (1980), ``lmder`` and ``lmpar``.
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
    Factors,
    factorize,
    init_from_step,
    newton_correction,
    resolvable,
    safe_div,
    scaled_norm,
)

_FACTOR = 100.0  # MINPACK's initial step bound factor (scipy passes 100)


class LmState(NamedTuple):
    x: jax.Array
    J: jax.Array
    fnorm: jax.Array
    diag: jax.Array  # D: scales of the variables
    xnorm: jax.Array  # ||D x|| at the iterate (MINPACK's, for xtol)
    delta: jax.Array  # the step bound
    par: jax.Array  # the Levenberg-Marquardt parameter
    first_iteration: jax.Array  # no step accepted yet: the bound is cut to the step
    factors: Factors  # SVD of J D^-1 at the iterate
    # The pending trial:
    pnorm: jax.Array
    prered: jax.Array
    dirder: jax.Array


def lmpar(factors: Factors, delta, par, m: int):
    """MINPACK's ``lmpar`` on an SVD: ``(par, z)`` with ``z = D p`` the solution of
    ``(A^T A + par I) z = -A^T f`` (``A = J D^-1``) such that ``||z||`` is within 10% of
    delta, or par = 0 if the Gauss-Newton step is that short."""
    uf, s, V = factors
    n = V.shape[0]
    eps = jnp.finfo(s.dtype).eps
    dwarf = jnp.finfo(s.dtype).tiny
    nonsingular = s > eps * max(m, n) * s[0]
    v = jnp.where(nonsingular, safe_div(uf, s), 0)  # the Gauss-Newton D p in V's basis
    z_gn = -V @ v
    dxnorm = scaled_norm(v)
    fp = dxnorm - delta
    gauss_newton = fp <= 0.1 * delta
    suf = s * uf
    # The Newton step's lower bound (``newton_correction``: from norms, never squares).
    parl = jnp.where(jnp.all(nonsingular), newton_correction(fp, delta, v, dxnorm, s), 0.0)
    gnorm = scaled_norm(suf)
    paru = gnorm / delta
    paru = jnp.where(paru == 0, dwarf / jnp.minimum(delta, 0.1), paru)
    par = jnp.minimum(jnp.maximum(par, parl), paru)
    par = jnp.where(par == 0, safe_div(gnorm, dxnorm), par)

    def body(carry):
        k, par, parl, paru, fp, z, done = carry
        par_k = jnp.where(par == 0, jnp.maximum(dwarf, 0.001 * paru), par)
        denom = s**2 + par_k
        q = suf / denom
        z_k = -V @ q
        dxnorm = scaled_norm(q)
        fp_k = dxnorm - delta
        exits = (jnp.abs(fp_k) <= 0.1 * delta) | (parl == 0) & (fp_k <= fp) & (fp < 0) | (k == 9)
        # fp_k dxnorm^2 / (delta sum(suf^2 / denom^3)), from norms (see parl above).
        parc = newton_correction(fp_k, delta, q, dxnorm, jnp.sqrt(denom))
        parl_k = jnp.where(fp_k > 0, jnp.maximum(parl, par_k), parl)
        paru_k = jnp.where(fp_k < 0, jnp.minimum(paru, par_k), paru)
        par_next = jnp.where(exits, par_k, jnp.maximum(parl_k, par_k + parc))
        keep = lambda old, new: jnp.where(done, old, new)
        return (
            k + 1,
            keep(par, par_next),
            keep(parl, parl_k),
            keep(paru, paru_k),
            keep(fp, fp_k),
            keep(z, z_k),
            done | exits,
        )

    # Until it exits (MINPACK's at most 10 trips), not 10 trips always: under vmap the
    # loop then runs until every problem's has exited, usually after 1-3. Not started
    # where the Gauss-Newton step is taken (its result is not used).
    carry = (jnp.asarray(0), par, parl, paru, fp, z_gn, gauss_newton)
    carry = vary_over_manual_axes(carry)
    _, par, _, _, _, z, _ = jax.lax.while_loop(lambda c: ~c[6], body, carry)
    return jnp.where(gauss_newton, 0.0, par), jnp.where(gauss_newton, z_gn, z)


def make(opts: Mapping[str, Any]) -> Stepper:
    ftol, xtol, gtol = opts["ftol"], opts["xtol"], opts["gtol"]
    scale_by_jac = opts["x_scale_jac"]

    def step(state: LmState | None, ev: Evaluation, box: Box | None, first):
        del box  # "lm" takes no bounds (the front door refuses them)
        x_new, unravel = ravel(ev.x)
        J_new, f_new, g_new = ev.aux.J, ev.aux.f, ev.aux.g
        m, n = J_new.shape
        dtype = J_new.dtype  # x's and the residuals' promoted dtype
        x_new = x_new.astype(dtype)
        eps = jnp.finfo(dtype).eps
        if state is None:
            state = vary_over_manual_axes(_placeholder(m, n, dtype))  # as the carry is
        fnorm1 = jnp.sqrt(2 * ev.f.astype(dtype))  # +inf for a non-finite trial

        # The trial's verdict (MINPACK lmder, after "evaluate the function at x + p").
        fnorm = state.fnorm
        actred = jnp.where(0.1 * fnorm1 < fnorm, 1 - safe_div(fnorm1, fnorm) ** 2, -1.0)
        ratio = safe_div(actred, state.prered)
        temp = jnp.where(
            actred >= 0, 0.5, safe_div(0.5 * state.dirder, state.dirder + 0.5 * actred)
        )
        temp = jnp.where((0.1 * fnorm1 >= fnorm) | (temp < 0.1), 0.1, temp)
        shrink = ratio <= 0.25
        grow = ~shrink & ((state.par == 0) | (ratio >= 0.75))
        delta = jnp.where(
            shrink,
            temp * jnp.minimum(state.delta, state.pnorm / 0.1),
            jnp.where(grow, state.pnorm / 0.5, state.delta),
        )
        par = jnp.where(shrink, state.par / temp, jnp.where(grow, 0.5 * state.par, state.par))
        accepted = (ratio >= 1e-4) & ~first
        new_point = first | accepted
        xnorm = jnp.where(accepted, jnp.linalg.norm(state.diag * x_new), state.xnorm)
        ftol_x = resolvable(ftol, ev.x)  # floored at x's eps (float32)
        ftol_met = (jnp.abs(actred) <= ftol_x) & (state.prered <= ftol_x) & (0.5 * ratio <= 1)
        xtol_met = delta <= resolvable(xtol, ev.x) * xnorm
        stringent_f = (jnp.abs(actred) <= eps) & (state.prered <= eps) & (0.5 * ratio <= 1)
        stop = jnp.where(
            ftol_met | stringent_f,
            Status.FTOL,
            jnp.where(xtol_met | (delta <= eps * xnorm), Status.XTOL, RUNNING),
        )
        stop = jnp.where(first, RUNNING, stop)

        pick = lambda new, old: jnp.where(new_point, new, old)
        x, J = pick(x_new, state.x), pick(J_new, state.J)
        fnorm = pick(fnorm1, state.fnorm)
        # The trial's column norms: read only where it is the new iterate (the first trip
        # or an accepted step), as everything computed from J_new, f_new and g_new below.
        norms = jnp.sqrt(jnp.sum(J_new**2, axis=0))
        if scale_by_jac:
            diag0 = jnp.where(norms == 0, 1.0, norms)
        else:
            diag0 = jnp.broadcast_to(1 / jnp.asarray(opts["x_scale"], dtype), (n,))
        diag = jnp.where(first, diag0, state.diag)
        # The first trip: the bound from ||D x0|| (MINPACK's factor 100), par = 0.
        xnorm0 = jnp.linalg.norm(diag0 * x)
        xnorm = jnp.where(first, xnorm0, xnorm)
        delta = jnp.where(first, jnp.where(xnorm0 == 0, _FACTOR, _FACTOR * xnorm0), delta)
        par = jnp.where(first, 0.0, par)
        first_iteration = first | state.first_iteration & ~accepted

        # gtol: the largest cosine between f and a column of J, at a new iterate.
        cosines = safe_div(jnp.abs(g_new), norms * fnorm1)
        stop = jnp.where(
            (stop == RUNNING) & new_point & (jnp.max(cosines) <= gtol), Status.CONVERGED, stop
        )
        if scale_by_jac:
            diag = pick(jnp.maximum(diag, norms), diag)

        factors = jax.lax.cond(
            new_point, lambda: factorize(J_new / diag, f_new), lambda: state.factors
        )
        par, z = lmpar(factors, delta, par, m)
        p = z / diag
        pnorm = jnp.linalg.norm(z)
        delta = jnp.where(first_iteration, jnp.minimum(delta, pnorm), delta)
        temp1 = safe_div(jnp.linalg.norm(J @ p), fnorm)
        temp2 = safe_div(jnp.sqrt(par) * pnorm, fnorm)
        new_state = LmState(
            x=x,
            J=J,
            fnorm=fnorm,
            diag=diag,
            xnorm=xnorm,
            delta=delta,
            par=par,
            first_iteration=first_iteration,
            factors=factors,
            pnorm=pnorm,
            prered=temp1**2 + temp2**2 / 0.5,
            dirder=-(temp1**2 + temp2**2),
        )
        return new_state, unravel(x + p), StepOutcome(accepted=accepted, stop=stop)

    return Stepper(
        init_from_step(step), step, step_starts=True, rejects_nonfinite=True, own_stopping=True
    )


def _placeholder(m: int, n: int, dtype) -> LmState:
    zero = jnp.zeros((), dtype)
    k = min(m, n)
    return LmState(
        x=jnp.zeros(n, dtype),
        J=jnp.zeros((m, n), dtype),
        fnorm=zero,
        diag=jnp.ones(n, dtype),
        xnorm=zero,
        delta=zero,
        par=zero,
        first_iteration=jnp.asarray(True),
        factors=Factors(jnp.zeros(k, dtype), jnp.zeros(k, dtype), jnp.zeros((n, k), dtype)),
        pnorm=zero,
        prered=zero,
        dirder=zero,
    )
