"""THE driver: one flat ``lax.while_loop``, one evaluation of ``fun`` per trip.

The driver owns everything that is the same for every method: the six statuses and
scipy's stopping rules, "return the last finite iterate", ``maxfun``, and the optional
``callback`` / ``disp`` / ``trace`` (absent from the compiled program unless asked for).
A method only says, per trip, whether the evaluated point is its new iterate and which
point to evaluate next; so a line search is a state machine, never a nested loop, and a
vmapped batch costs exactly as many evaluations as its hardest member.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._method import Box, Evaluation, Stepper
from jaxopt_dict._result import RUNNING, OptimizeResult, Status, Trace
from jaxopt_dict._tree import all_finite, inf_norm, project, projected_gradient

PyTree = Any


class LoopConfig(NamedTuple):
    """Structural (static) settings of the driver."""

    maxiter: int
    disp: bool = False
    trace: bool = False
    callback: Callable[[OptimizeResult], Any] | None = None


class _Carry(NamedTuple):
    state: Any  # the method's state
    trial: PyTree  # the point to evaluate on the next trip
    x: PyTree  # the current iterate: the last accepted point (f, g finite)
    f: jax.Array
    g: PyTree
    nit: jax.Array
    nfev: jax.Array
    status: jax.Array
    small_gradient: jax.Array  # gtol held at the current iterate (for has_memory)
    trace: Trace | None


def reduction_too_small(f_old: jax.Array, f: jax.Array, ftol: jax.Array) -> jax.Array:
    """scipy's FTOL rule, plus: a decrease below one ulp of f itself is rounding noise.

    scipy stops when ``f_old - f <= ftol * max(|f_old|, |f|, 1)``. In float32 its default
    ftol (2.2e-9) is below what f can resolve, so a solve would wander on rounding noise
    until maxiter or a failed line search; a decrease within ``eps * max(|f_old|, |f|)``
    (one ulp, no absolute floor, so f -> 0 does not stop a solve early) ends it with FTOL
    instead. In float64 with scipy's default ftol the second test never decides first.
    """
    scale = jnp.maximum(jnp.abs(f_old), jnp.abs(f))
    scipy_rule = f_old - f <= ftol * jnp.maximum(scale, 1.0)
    return scipy_rule | (f_old - f <= jnp.finfo(f.dtype).eps * scale)


def _host_report(config: LoopConfig) -> Callable[..., None]:
    """A host function printing (``disp``) and calling back (``callback``) per iteration."""

    def report(accepted, x, f, g, nit, nfev, pg_norm, step_norm):
        if not bool(accepted):
            return
        if config.disp:
            print(
                f"iter {int(nit):6d}  f = {float(f): .8e}  |pg|_inf = {float(pg_norm):.3e}"
                f"  |step|_inf = {float(step_norm):.3e}  nfev = {int(nfev)}",
                flush=True,
            )
        if config.callback is not None:
            nfev = np.asarray(nfev)
            config.callback(
                OptimizeResult(
                    x=x,
                    fun=f,
                    jac=g,
                    nit=nit,
                    nfev=nfev,
                    njev=nfev,
                    status=np.asarray(RUNNING, np.int32),
                    success=np.asarray(False),
                )
            )

    return report


def _final_message(status) -> None:
    print(f"     {Status(int(status)).message}", flush=True)


def start(
    stepper: Stepper,
    ev0: Evaluation,
    box: Box | None,
    opts: Mapping[str, Any],
    config: LoopConfig,
) -> _Carry:
    """The loop's carry from the evaluation at the (already projected) starting point."""
    gtol, maxfun = opts["gtol"], opts["maxfun"]
    x0, f0 = ev0.x, ev0.f
    finite0 = jnp.isfinite(f0) & all_finite(ev0.g)
    state, trial = stepper.init(ev0, box)
    small_gradient0 = inf_norm(projected_gradient(x0, ev0.g, box)) <= gtol
    status0 = jnp.select(
        [~finite0, small_gradient0 & (not stepper.has_memory), config.maxiter == 0, maxfun <= 1],
        [Status.NONFINITE, Status.CONVERGED, Status.MAX_ITER, Status.MAX_ITER],
        RUNNING,
    ).astype(jnp.int32)
    trace0 = None
    if config.trace:
        length = config.maxiter + 1
        trace0 = Trace(
            fun=jnp.full((length,), f0),
            x=jax.tree.map(lambda v: jnp.broadcast_to(v, (length,) + v.shape), x0),
        )
    return _Carry(
        state,
        optax.tree.cast_like(trial, x0),
        x0,
        f0,
        ev0.g,
        jnp.asarray(0, jnp.int32),
        jnp.asarray(1, jnp.int32),
        status0,
        small_gradient0,
        trace0,
    )


def advance(
    stepper: Stepper,
    c: _Carry,
    ev: Evaluation,
    box: Box | None,
    opts: Mapping[str, Any],
    config: LoopConfig,
) -> _Carry:
    """One trip's bookkeeping: feed the evaluation at ``c.trial`` to the method, then decide
    whether the solve goes on (the driver's stopping rules, in priority order)."""
    gtol, xtol, maxfun = opts["gtol"], opts["xtol"], opts["maxfun"]
    nfev = c.nfev + 1
    finite = jnp.isfinite(ev.f) & all_finite(ev.g)
    state, trial, outcome = stepper.step(c.state, ev, box)
    # Keep the carry's dtypes exactly (a strongly typed float64 hyperparameter must not
    # promote a float32 state).
    state = jax.tree.map(lambda new, old: new.astype(old.dtype), state, c.state)
    trial = optax.tree.cast_like(trial, c.trial)
    accepted = jnp.asarray(outcome.accepted, bool) & finite
    failed = jnp.asarray(outcome.failed, bool)
    nit = c.nit + accepted.astype(jnp.int32)
    x = optax.tree.where(accepted, ev.x, c.x)
    f = jnp.where(accepted, ev.f, c.f)
    g = optax.tree.where(accepted, ev.g, c.g)
    pg_norm = inf_norm(projected_gradient(ev.x, ev.g, box))
    step_norm = inf_norm(optax.tree.sub(ev.x, c.x))
    reduction_small = False
    if stepper.uses_ftol:
        reduction_small = reduction_too_small(c.f, ev.f, opts["ftol"])
    small_gradient = jnp.where(accepted, pg_norm <= gtol, c.small_gradient)
    converged = accepted & small_gradient
    if stepper.has_memory:
        converged = converged & c.small_gradient
    status = jnp.select(
        [
            ~finite,
            converged,
            accepted & reduction_small,
            accepted & (step_norm <= xtol),
            failed,
            accepted & (nit >= config.maxiter),
            nfev >= maxfun,
        ],
        [
            Status.NONFINITE,
            Status.CONVERGED,
            Status.FTOL,
            Status.XTOL,
            Status.LINESEARCH_FAILED,
            Status.MAX_ITER,
            Status.MAX_ITER,
        ],
        RUNNING,
    ).astype(jnp.int32)
    trace = c.trace
    if trace is not None:
        row = jnp.minimum(nit, config.maxiter)
        trace = Trace(
            fun=trace.fun.at[row].set(jnp.where(accepted, ev.f, trace.fun[row])),
            x=jax.tree.map(
                lambda buf, v: buf.at[row].set(jnp.where(accepted, v, buf[row])),
                trace.x,
                ev.x,
            ),
        )
    if config.disp or config.callback is not None:
        jax.debug.callback(_host_report(config), accepted, x, f, g, nit, nfev, pg_norm, step_norm)
    return _Carry(state, trial, x, f, g, nit, nfev, status, small_gradient, trace)


def finish(c: _Carry, config: LoopConfig) -> OptimizeResult:
    """The result from the final carry (trace rows past ``nit`` repeat the final value)."""
    trace = c.trace
    if trace is not None:
        past = jnp.arange(config.maxiter + 1) > c.nit
        trace = Trace(
            fun=jnp.where(past, c.f, trace.fun),
            x=jax.tree.map(
                lambda buf, v: jnp.where(past.reshape((-1,) + (1,) * v.ndim), v, buf),
                trace.x,
                c.x,
            ),
        )
    success = (c.status == Status.CONVERGED) | (c.status == Status.FTOL)
    success = success | (c.status == Status.XTOL)
    return OptimizeResult(
        x=c.x,
        fun=c.f,
        jac=c.g,
        nit=c.nit,
        nfev=c.nfev,
        njev=c.nfev,
        status=c.status,
        success=success,
        trace=trace,
    )


def run(
    stepper: Stepper,
    evaluate: Callable[[PyTree], Evaluation],
    x0: PyTree,
    box: Box | None,
    opts: Mapping[str, Any],
    config: LoopConfig,
) -> OptimizeResult:
    """Run ``stepper`` to termination and return the result.

    Args:
      stepper: the method's ``(init, step)`` functions.
      evaluate: ``x -> Evaluation`` (value and gradient, and the Hessian if needed).
      x0: the starting point; projected onto ``box`` first, as scipy does.
      box: the bounds, or ``None``.
      opts: ``gtol``, ``xtol``, ``maxfun`` and, for ``stepper.uses_ftol``, ``ftol``.
      config: the static settings.
    """
    ev0 = evaluate(project(x0, box))
    carry = start(stepper, ev0, box, opts, config)
    if config.disp:
        jax.debug.callback(
            lambda f, pg: print(f"iter      0  f = {float(f): .8e}  |pg|_inf = {float(pg):.3e}"),
            ev0.f,
            inf_norm(projected_gradient(ev0.x, ev0.g, box)),
        )

    def body(c: _Carry) -> _Carry:
        ev = evaluate(c.trial)  # The one evaluation of this trip.
        return advance(stepper, c, ev, box, opts, config)

    carry = jax.lax.while_loop(lambda c: c.status == RUNNING, body, carry)
    if config.disp:
        jax.debug.callback(_final_message, carry.status)
    return finish(carry, config)
