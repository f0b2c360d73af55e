"""THE driver: one flat ``lax.while_loop``, one evaluation of ``fun`` per trip.

The driver owns everything that is the same for every method: the six statuses and
scipy's stopping rules, "return the last finite iterate", ``maxfun``, and the optional
``callback`` / ``disp`` / ``progress`` / ``trace`` (absent from the compiled program
unless asked for). A method only says, per trip, whether the evaluated point is its new
iterate and which point to evaluate next; so a line search is a state machine, never a
nested loop, and a vmapped batch costs exactly as many evaluations as its hardest member.
Nothing is evaluated before the loop: its first trip evaluates x0 and starts the method.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._method import Box, Evaluation, StepOutcome, Stepper
from jaxopt_dict._progress import Bar
from jaxopt_dict._result import RUNNING, OptimizeResult, Status, Trace, status_message
from jaxopt_dict._tree import (
    empty_box,
    in_manual_mesh,
    inf_norms,
    project_start,
    projected_gradient,
    promoted,
    select_first,
    vary_over_manual_axes,
)

PyTree = Any
# Steps in a row x must hold still (xtol) before a method with a velocity (has_memory)
# stops with XTOL, where the method does not say (``Stepper.still_steps``): a user's
# optax rule. float32 momentum (0.9) near x = 300 held still for runs of 1, 1, 4 and 23
# steps, moving on after each; a rate too small to ever move x costs 10 iterations.
STILL_STEPS = 10


class LoopConfig(NamedTuple):
    """Structural (static) settings of the driver."""

    maxiter: int
    disp: bool = False
    trace: bool = False
    callback: Callable[[OptimizeResult], Any] | None = None
    # ``adjoint="unrolled"``: the loop is a bounded, checkpointed scan of this many trips
    # (reverse-differentiable); ``None``: a ``while_loop`` (``run``).
    unrolled_trips: int | None = None
    # ``options["progress"]``: a tqdm bar of the iterations (``_progress``).
    progress: bool = False


class _Carry(NamedTuple):
    state: Any  # the method's state
    trial: PyTree  # the point to evaluate on the next trip
    x: PyTree  # the current iterate: the last accepted point (f, g finite)
    f: jax.Array
    f0: jax.Array  # f at x0: FTOL and XTOL are successes only below it (progress)
    g: PyTree
    nit: jax.Array
    nfev: jax.Array
    status: jax.Array
    small_gradient: jax.Array  # gtol held at the current iterate (for has_memory)
    still_steps: jax.Array | None  # steps in a row that held xtol (has_memory only; else None)
    trace: Trace | None
    aux: PyTree  # fun's aux at the current iterate (has_aux=True), else None


def reduction_too_small(f_old: jax.Array, f: jax.Array, ftol: jax.Array | float) -> jax.Array:
    """scipy's FTOL rule, plus: a decrease below one ulp of f itself is rounding noise.

    scipy stops when ``f_old - f <= ftol * max(|f_old|, |f|, 1)``. In float32 its default
    ftol (2.2e-9) is below what f can resolve, so a solve would wander on rounding noise
    until maxiter or a failed line search; a decrease within ``eps * max(|f_old|, |f|)``
    (one ulp, no absolute floor, so f -> 0 does not stop a solve early) ends it with FTOL
    instead. In float64 with scipy's default ftol the second test never decides first.
    ``ftol`` NaN (not set: GD's and Newton's default) is the one-ulp rule alone; ``ftol=0``
    turns both off: the solve never stops on f.
    """
    scale = jnp.maximum(jnp.abs(f_old), jnp.abs(f))
    rounding_noise = f_old - f <= jnp.finfo(f.dtype).eps * scale
    bound = promoted(jnp.multiply, ftol, jnp.maximum(scale, 1.0))
    scipy_rule = promoted(jnp.less_equal, f_old - f, bound)  # False where ftol is NaN
    return (ftol > 0) & scipy_rule | (jnp.isnan(ftol) | (ftol > 0)) & rounding_noise


# Exceptions raised by users' callbacks, by solve: a solve called outside a user's jit
# gets a token (> 0); its host callback keeps the exception here and stops the solve, and
# ``minimize`` raises it as itself once the program returns (an exception escaping a host
# callback would reach the caller wrapped in an XLA runtime error). Token -1 (a solve
# traced inside a user's jit or vmap): the exception escapes the callback (wrapped).
_callback_errors: dict[int, Exception] = {}
_callback_tokens = itertools.count(1)
_callback_lock = threading.Lock()
NO_CALLBACK_TOKEN = -1


def new_callback_token() -> int:
    """A fresh token for one solve whose callback exceptions ``minimize`` re-raises."""
    with _callback_lock:
        return next(_callback_tokens)


def pop_callback_error(token: int) -> Exception | None:
    """The exception the callback of the solve with ``token`` raised, if any."""
    with _callback_lock:
        return _callback_errors.pop(token, None)


def success_of(status, f, f0):
    """``res.success`` from the final status, f and f(x0): CONVERGED, or FTOL/XTOL after
    progress (``f < f0``). NumPy and JAX values alike (the host report uses it too)."""
    stopped = (status == Status.FTOL) | (status == Status.XTOL)
    return (status == Status.CONVERGED) | (stopped & (f < f0))


def _own_entry(i: int, batch: np.ndarray) -> np.ndarray:
    """Entry ``i`` of a batch, an array of its own."""
    return np.array(batch[i])


class _HostReport:
    """The host side of ``disp``, ``callback`` and ``progress``, called once per trip of
    the loop (``advance``) with the trip's values. It prints, calls the user's callback and
    moves the progress bar, and returns 1 where a problem must stop (its callback raised).

    Under ``jax.vmap`` (``vmap_method="broadcast_all"``) it gets the whole batch at once:
    every value has the batch's leading dimensions (one per vmap; nested ones are flattened
    in C order, so problem ``i`` is entry ``i`` of ``res.nit.ravel()``). Lines are then
    labelled with the problem's index, only problems still running are reported (a finished
    problem's trips are discarded by the loop), the callback is called once per problem
    with its own ``OptimizeResult``, and the progress bar counts the iterations of the
    problem furthest along. Unbatched, lines carry no label.

    A problem's final line (its status message) is printed on the trip that ends it: the
    status the trip computed, or ``CALLBACK_STOP`` where the callback raised.
    """

    def __init__(self, config: LoopConfig):
        self.config = config
        self.bar = Bar(unit="it") if config.progress else None
        self.postfix: str | None = None
        self.count = 0  # the bar's count: iterations of the problem furthest along

    def __call__(self, token, running, first, accepted, status, values, xg):
        try:
            return self._report(token, running, first, accepted, status, values, xg)
        except BaseException:
            if self.bar is not None:  # the run ends here: the program reports an error
                self.bar.close()
            raise

    def _report(self, token, running, first, accepted, status, values, xg):
        config = self.config
        batch_shape = np.shape(running)
        size = math.prod(batch_shape)

        def flat(value):
            value = np.asarray(value)
            return value.reshape((size,) + value.shape[len(batch_shape) :])

        running, first, accepted, status = map(flat, (running, first, accepted, status))
        f, f0, nit, nfev, pg_norm, step_norm = map(flat, values)
        token = int(np.ravel(token)[0])
        if xg is not None:
            xg = jax.tree.map(flat, xg)
        width = len(str(size - 1))
        bar = self.bar
        if bar is not None and (first.any() or not bar.is_open):  # a new run of the program
            bar.open(self.config.maxiter)
            self.postfix, self.count = None, 0
        say = functools.partial(print, flush=True) if bar is None else bar.print
        stop = np.zeros(size, np.int32)
        end = status.copy()  # each problem's status after this trip
        for i in np.flatnonzero(running).tolist():
            label = f"problem {i:>{width}}  " if batch_shape else ""
            if first[i]:
                if config.disp:
                    say(
                        f"{label}iter      0  f = {float(f[i]): .8e}"
                        f"  |pg|_inf = {float(pg_norm[i]):.3e}"
                    )
            elif accepted[i]:
                if config.disp:
                    say(
                        f"{label}iter {int(nit[i]):6d}  f = {float(f[i]): .8e}"
                        f"  |pg|_inf = {float(pg_norm[i]):.3e}"
                        f"  |step|_inf = {float(step_norm[i]):.3e}  nfev = {int(nfev[i])}"
                    )
                if xg is not None:  # a callback: x, g (and fun's aux) came to the host
                    # The problem's own values, as arrays of their own (the callback may
                    # keep them).
                    own = functools.partial(_own_entry, i)
                    x, g, aux, *scalars = jax.tree.map(own, (*xg, f, nit, nfev))
                    stop[i] = self._call_back(token, x, g, aux, *scalars)
                    if stop[i] and end[i] == RUNNING:
                        end[i] = Status.CALLBACK_STOP
            if config.disp and end[i] != RUNNING:
                success = bool(success_of(end[i], f[i], f0[i]))
                say(f"{label}     {status_message(end[i], success)}")
        if bar is not None:
            self._progress(bar, batch_shape, running, first, accepted, end, f, nit, pg_norm)
        return stop.reshape(batch_shape)

    def _call_back(self, token, x, g, aux, f, nit, nfev) -> int:
        """The user's callback on one problem's iterate; 1 if the problem must stop."""
        assert self.config.callback is not None
        intermediate = OptimizeResult(
            x=x,
            fun=f,
            jac=g,
            nit=nit,
            nfev=nfev,
            njev=nfev,
            status=np.asarray(RUNNING, np.int32),
            success=np.asarray(False),
            aux=aux,
        )
        try:
            self.config.callback(intermediate)
        except StopIteration:  # scipy >= 1.11: stop, and return the current iterate.
            return 1
        except Exception as error:
            if token == NO_CALLBACK_TOKEN:
                raise
            with _callback_lock:
                _callback_errors[token] = error
            return 1
        return 0

    def _progress(self, bar, batch_shape, running, first, accepted, end, f, nit, pg_norm):
        """The bar: iterations of the problem furthest along, out of maxiter, with its f and
        |pg|_inf (from its last iterate); closed on the trip that ends the last problem."""
        # A finished problem's values are stale (its trips are discarded): the running
        # ones tell, and the count keeps the most any problem reached.
        candidates = np.flatnonzero(running)
        lead = candidates[np.argmax(nit[candidates])]
        self.count = max(self.count, int(nit[lead]))
        if first[lead] or accepted[lead]:
            self.postfix = f"f={float(f[lead]):.6e}, |pg|_inf={float(pg_norm[lead]):.2e}"
            if batch_shape:
                still = int(np.sum(running & (end == RUNNING)))
                self.postfix = f"problem {lead}, {self.postfix}, running {still}/{len(end)}"
        done = not np.any(running & (end == RUNNING))
        bar.show(self.count, self.postfix, close=done)


def start(
    stepper: Stepper,
    x0: PyTree,
    ev_types: Evaluation,
    box: Box | None,
    config: LoopConfig,
) -> _Carry:
    """The carry before anything is evaluated: the first trip evaluates ``x0``.

    ``x0`` must already be projected; ``ev_types`` is an evaluation's shapes and dtypes
    (``jax.eval_shape``). The method's state is a placeholder of zeros (see
    ``Stepper.step_starts``): no code of the method's ``init`` enters the program, except
    under ``adjoint="unrolled"``, where the placeholder is ``init``'s state at x0 (below).
    """
    state_types = jax.eval_shape(lambda ev: stepper.init(ev, box)[0], ev_types)
    zeros = lambda t: jnp.zeros(t.shape, t.dtype)
    trace0 = None
    if config.trace:
        length = config.maxiter + 1
        trace0 = Trace(
            fun=jnp.zeros((length,), ev_types.f.dtype),
            x=jax.tree.map(lambda v: jnp.zeros((length,) + v.shape, v.dtype), x0),
        )
    state = jax.tree.map(zeros, state_types)
    if config.unrolled_trips is not None:
        # Reverse mode differentiates the first trip's step on the placeholder too (its
        # result is discarded by a select, but a NaN partial times a zero cotangent is
        # NaN): start from a state the method can step from, ``init`` at x0 with f = 0
        # and a zero gradient (an empty L-BFGS memory instead of an all-zero one).
        placeholder = jax.tree.map(zeros, ev_types)._replace(x=x0)
        made = stepper.init(placeholder, box)[0]
        state = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), made, state)
    return _Carry(
        state=state,
        trial=x0,
        x=x0,
        f=zeros(ev_types.f),
        f0=zeros(ev_types.f),
        g=jax.tree.map(zeros, ev_types.g),
        nit=jnp.asarray(0, jnp.int32),
        nfev=jnp.asarray(0, jnp.int32),
        status=jnp.asarray(RUNNING, jnp.int32),
        small_gradient=jnp.asarray(False),
        still_steps=jnp.asarray(0, jnp.int32) if stepper.has_memory else None,
        trace=trace0,
        aux=jax.tree.map(zeros, ev_types.fun_aux),
    )


def starting_stepper(stepper: Stepper) -> Stepper:
    """``stepper`` in the driver's one calling convention, ``step(state, ev, box, first)``
    (``Stepper.step_starts``). A stepper written without it keeps its two functions: the
    new ``step`` runs ``init`` on the first trip and the old ``step`` on the others, picked
    by a ``lax.cond`` (under ``vmap`` a select: both run; inside ``shard_map`` a select
    too, as the built-in steppers do there: the cond's branches failed JAX's varying-axes
    check under a vmap in the body). Both give the state's dtypes and x's; on the first
    trip the outcome is zeros of ``step``'s outcome types (the driver does not read it
    then).

    Raises:
      ValueError: ``own_stopping`` without ``step_starts`` (x0's trip must report the
        method's own verdict, which ``init`` cannot).
    """
    if stepper.step_starts:
        return stepper
    if stepper.own_stopping:
        raise ValueError(
            "Stepper(own_stopping=True) needs step_starts=True: x0's trip must report the "
            "method's own stopping verdict (StepOutcome.stop), and init returns none."
        )
    init, step = stepper.init, stepper.step

    def step_or_start(state, ev, box, first):
        def like(new_state, new_trial):
            # The state's and x's dtypes exactly: init's may differ (a float64 constant).
            new_state = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), new_state, state)
            return new_state, optax.tree.cast_like(new_trial, ev.x)

        def as_arrays(outcome: StepOutcome) -> StepOutcome:
            return outcome._replace(
                accepted=jnp.asarray(outcome.accepted, bool),
                failed=jnp.asarray(outcome.failed, bool),
            )

        def step_here():
            new_state, new_trial, outcome = step(state, ev, box)
            return *like(new_state, new_trial), as_arrays(outcome)

        outcome_types = jax.eval_shape(step_here)[2]

        def start_here():
            outcome = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), outcome_types)
            return *like(*init(ev, box)), outcome

        if in_manual_mesh():
            pick = lambda a, b: jnp.where(first, a, b)
            return jax.tree.map(pick, start_here(), step_here())
        return jax.lax.cond(first, start_here, step_here)

    return stepper._replace(step=step_or_start, step_starts=True)


def _step(stepper: Stepper, state, trial, ev: Evaluation, box: Box | None, first: jax.Array):
    """The method's step (``Stepper.step_starts``: on the first trip, ``first``, it starts
    the method from ``ev`` at x0).

    The new state and trial keep the carry's dtypes exactly (a strongly typed float64
    hyperparameter must not promote a float32 state)."""
    assert stepper.step_starts, "the driver takes steppers through starting_stepper"
    new_state, new_trial, outcome = stepper.step(state, ev, box, first)
    new_state = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), new_state, state)
    # Inside shard_map a state field computed from options alone (not the problem's
    # data) is not varying over the mesh axes while the carry's is: make it so.
    new_state = vary_over_manual_axes(new_state)
    return new_state, optax.tree.cast_like(new_trial, trial), outcome


def advance(
    stepper: Stepper,
    c: _Carry,
    ev: Evaluation,
    box: Box | None,
    opts: Mapping[str, Any],
    config: LoopConfig,
) -> _Carry:
    """One trip's bookkeeping: feed the evaluation at ``c.trial`` to the method, then decide
    whether the solve goes on (the driver's stopping rules, in priority order).

    The first trip (``nfev == 0``) evaluates x0: it starts the method, sets the iterate
    and counts no iteration; x0 may already satisfy ``gtol`` (or ``maxiter`` be 0).

    A non-finite f or gradient ends the solve (``NONFINITE``) at x0, and later for a
    method without a line search; a line search (``Stepper.rejects_nonfinite``) gets the
    trial with ``f = +inf`` and backs away from it, and the solve ends ``NONFINITE`` only
    if the search then fails on a non-finite trial.
    """
    gtol, xtol, maxfun = opts["gtol"], opts["xtol"], opts["maxfun"]
    first = c.nfev == 0
    if box is not None:
        # Bounds whose box holds no point (traced ones: the front door refuses concrete
        # ones) end the solve at x0 as a non-finite f there would: NONFINITE, f NaN.
        ev = ev._replace(f=jnp.where(first & empty_box(box), jnp.nan, ev.f))
    nfev = c.nfev + 1
    # Every norm of the trip in one reduction; g's is NaN or inf where g is not finite.
    if box is None:
        g_norm, step_norm = inf_norms(ev.g, optax.tree.sub(ev.x, c.x))
        pg_norm = g_norm
    else:
        g_norm, pg_norm, step_norm = inf_norms(
            ev.g, projected_gradient(ev.x, ev.g, box), optax.tree.sub(ev.x, c.x)
        )
    finite = jnp.isfinite(ev.f) & jnp.isfinite(g_norm)
    # One signal for every method: a trial that is not finite has f = +inf (a NaN would
    # slip through comparisons, and -inf would pass any sufficient-decrease test).
    seen = ev._replace(f=jnp.where(finite, ev.f, jnp.inf))
    state, trial, outcome = _step(stepper, c.state, c.trial, seen, box, first)
    moved = step_norm
    if outcome.blocked_norm is not None:
        moved = jnp.maximum(step_norm, outcome.blocked_norm.astype(step_norm.dtype))
    accepted = jnp.asarray(outcome.accepted, bool) & finite & ~first
    failed = jnp.asarray(outcome.failed, bool) & ~first
    # The evaluated point becomes the iterate: x0 on the first trip, then accepted ones.
    take = accepted | first
    nit = jnp.where(first, 0, c.nit + accepted.astype(jnp.int32))
    x = optax.tree.where(take, ev.x, c.x)
    f = jnp.where(take, ev.f, c.f)
    f0 = jnp.where(first, ev.f, c.f0)
    aux = optax.tree.where(take, ev.fun_aux, c.aux) if c.aux is not None else None
    g = optax.tree.where(take, ev.g, c.g)
    reduction_small = False
    if stepper.uses_ftol:
        reduction_small = reduction_too_small(c.f, ev.f, opts["ftol"])
    small_gradient = jnp.where(take, promoted(jnp.less_equal, pg_norm, gtol), c.small_gradient)
    if stepper.own_stopping:
        # The method's own rules decide (``Stepper.own_stopping``), x0's trip included.
        assert outcome.stop is not None
        converged = jnp.asarray(False)
    elif stepper.has_memory:
        # Two consecutive small gradients, except at x0, where the method is still at rest
        # (no velocity yet): x0 satisfying gtol ends the solve with nit = 0, as for the others.
        converged = ((accepted & c.small_gradient) | first) & small_gradient
    else:
        converged = take & small_gradient
    small_step = promoted(jnp.less_equal, moved, xtol)
    stopped_moving = accepted & small_step
    still_steps = None
    if stepper.has_memory:
        # An update lost to rounding is no stall for a method with a velocity: at its
        # turning point (float32 momentum near x = 300) x stays put a few times and then
        # moves on. It has stopped only after STILL_STEPS steps in a row.
        # (On x0's trip the count starts at 0: a batch lane's previous problem left its own.)
        assert c.still_steps is not None  # carried for has_memory (``start``)
        still = jnp.where(small_step, c.still_steps + 1, 0)
        still_steps = jnp.where(first, 0, jnp.where(accepted, still, c.still_steps))
        required = STILL_STEPS if stepper.still_steps is None else stepper.still_steps
        stopped_moving = accepted & (still_steps >= required)
    ends_nonfinite = ~finite if not stepper.rejects_nonfinite else ~finite & first
    # (condition, status) in priority order; the method's own verdict only where it has
    # one (``own_stopping``): a select on constants still costs kernels in every trip.
    rules: list[tuple[Any, Any]] = [(ends_nonfinite, Status.NONFINITE)]
    if outcome.stop is not None:
        method_stop = jnp.asarray(outcome.stop, jnp.int32)
        rules.append((method_stop != RUNNING, method_stop))
    if not stepper.own_stopping:
        rules += [
            (converged, Status.CONVERGED),
            (accepted & reduction_small, Status.FTOL),
            (stopped_moving, Status.XTOL),
        ]
    rules += [
        (failed & ~finite, Status.NONFINITE),  # the search's budget ran out on non-finite trials
        (failed, Status.LINESEARCH_FAILED),
        (take & (nit >= config.maxiter), Status.MAX_ITER),
        (promoted(jnp.greater_equal, nfev, maxfun), Status.MAX_ITER),
    ]
    status = select_first(rules, RUNNING).astype(jnp.int32)
    trace = c.trace
    if trace is not None:
        row = jnp.minimum(nit, config.maxiter)
        trace = Trace(
            fun=trace.fun.at[row].set(jnp.where(take, ev.f, trace.fun[row])),
            x=jax.tree.map(
                lambda buf, v: buf.at[row].set(jnp.where(take, v, buf[row])),
                trace.x,
                ev.x,
            ),
        )
    if config.disp or config.callback is not None or config.progress:
        token = opts.get("callback_token", NO_CALLBACK_TOKEN)
        # A pure callback: its result is used, so it always runs, and (unlike io_callback)
        # it is allowed in a vmapped while_loop. Under vmap it runs once per trip for the
        # whole batch ("broadcast_all": every argument gets the batch's dimensions), so
        # the host can label each problem's lines (``_HostReport``). x, g and fun's aux
        # travel to the host only for a callback.
        values = (f, f0, nit, nfev, pg_norm, step_norm)
        xg = (x, g, aux) if config.callback is not None else None
        stop = jax.pure_callback(
            _HostReport(config),
            jax.ShapeDtypeStruct((), jnp.int32),
            token,
            c.status == RUNNING,
            first,
            accepted,
            status,
            values,
            xg,
            vmap_method="broadcast_all",
        )
        status = jnp.where((status == RUNNING) & (stop != 0), Status.CALLBACK_STOP, status)
    return _Carry(
        state, trial, x, f, f0, g, nit, nfev, status, small_gradient, still_steps, trace, aux
    )


def finish(c: _Carry, config: LoopConfig) -> OptimizeResult:
    """The result from the final carry (trace rows past ``nit`` repeat the final value)."""
    trace = c.trace
    if trace is not None:
        past = jnp.arange(config.maxiter + 1, dtype=c.nit.dtype) > c.nit
        trace = Trace(
            fun=jnp.where(past, c.f, trace.fun),
            x=jax.tree.map(
                lambda buf, v: jnp.where(past.reshape((-1,) + (1,) * v.ndim), v, buf),
                trace.x,
                c.x,
            ),
        )
    # FTOL and XTOL say the solve stopped moving; that is a success only if it got
    # somewhere (an update lost to rounding from x0 also stops x).
    success = success_of(c.status, c.f, c.f0)
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
        aux=c.aux,
    )


def checkpointed_loop(body: Callable[[_Carry], _Carry], carry: _Carry, trips: int) -> _Carry:
    """``while status == RUNNING: carry = body(carry)`` for at most ``trips`` trips, in a
    form reverse mode can differentiate: the derivative of the iterations themselves.

    Two nested scans of about sqrt(trips) trips each, both levels under ``jax.checkpoint``
    (Griewank & Walther, "Evaluating Derivatives", sec. 12.3, two-level checkpointing):
    the reverse pass keeps the carry at the start of each outer block and, for the block it
    is in, at each trip, so memory is about 2 sqrt(trips) carries, at the price of running
    each trip three times (forward, block recompute, trip recompute). A trip after the
    solve stopped, and a whole block after it, is a ``lax.cond`` that passes the carry
    through (under ``vmap`` a select: a batch costs its longest member, as a
    ``while_loop``).
    """
    block = math.isqrt(trips - 1) + 1  # ceil(sqrt(trips))
    blocks = -(-trips // block)
    running = lambda c: c.status == RUNNING

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def trip(c: _Carry, index: jax.Array) -> tuple[_Carry, None]:
        go = running(c) & (index < trips)  # the last block may reach past the bound
        return jax.lax.cond(go, body, lambda c: c, c), None

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def run_block(c: _Carry, first_index: jax.Array) -> _Carry:
        indices = first_index + jnp.arange(block, dtype=jnp.int32)
        return jax.lax.scan(trip, c, indices)[0]

    def outer(c: _Carry, first_index: jax.Array) -> tuple[_Carry, None]:
        return jax.lax.cond(running(c), run_block, lambda c, _: c, c, first_index), None

    starts = jnp.arange(blocks, dtype=jnp.int32) * block
    return jax.lax.scan(outer, carry, starts)[0]


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
    x0 = project_start(x0, box)
    carry = start(stepper, x0, jax.eval_shape(evaluate, x0), box, config)

    def body(c: _Carry) -> _Carry:
        ev = evaluate(c.trial)  # The one evaluation of this trip.
        return advance(stepper, c, ev, box, opts, config)

    carry = vary_over_manual_axes(carry)
    if config.unrolled_trips is None:
        carry = jax.lax.while_loop(lambda c: c.status == RUNNING, body, carry)
    else:
        carry = checkpointed_loop(body, carry, config.unrolled_trips)
        # A method that needs more trips than the bound (``_minimize`` sizes it to what
        # maxiter and maxfun allow) stops where it is, as maxfun stops it.
        carry = carry._replace(
            status=jnp.where(carry.status == RUNNING, Status.MAX_ITER, carry.status)
        )
    # disp's final line and the progress bar's end come from the host report of the
    # trip that ends the solve (``_HostReport``).
    return finish(carry, config)
