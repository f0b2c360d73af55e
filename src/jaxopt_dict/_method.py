"""The method-extension API: what a method is, and what its ``init`` and ``step`` see.

A method is a record of pure functions, not a class. The shared driver (``_loop.py``)
evaluates ``fun`` exactly once per trip of one flat ``lax.while_loop`` and hands the
evaluation to the method's ``step``, which returns its new state and the next point to
evaluate. Line searches are therefore state machines inside ``step``: a trial that is not
accepted simply asks for another point on the next trip.

Example: plain gradient descent in a few lines::

    import optax, jaxopt_dict as jd

    def make(opts):
        def advance(ev, box):
            return jd.project(optax.tree.add_scale(ev.x, -opts["learning_rate"], ev.g), box)

        def init(ev, box):
            return (), advance(ev, box)

        def step(state, ev, box):
            return state, advance(ev, box), jd.StepOutcome(accepted=True)

        return jd.Stepper(init, step)

    my_gd = jd.Method("my-gd", make, options=(jd.Option("learning_rate", 0.1),),
                      supports_bounds=True)
    jd.minimize(fun, x0, method=my_gd)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from jaxopt_dict._options import Option

PyTree = Any
State = Any


class Box(NamedTuple):
    """Box bounds as pytrees with x's structure; leaves broadcast to x's leaves."""

    lower: PyTree
    upper: PyTree


class Evaluation(NamedTuple):
    """``fun`` evaluated at one point: the only information a method gets about ``fun``.

    Attributes:
      x: the point (x0's structure).
      f: the scalar value.
      g: the gradient (x0's structure and dtypes).
      hess: the Hessian of f in ``ravel_pytree(x)`` coordinates, for methods with
        ``needs_hessian=True``; ``None`` otherwise.
      aux: by-products of the same evaluation that a method's own objective (see
        ``Method.prepare``) hands to its step; ``None`` otherwise. PG puts L's gradient
        and Hessian in y space here, so its step needs no second evaluation of ``fun``.
      fun_aux: what ``fun`` returned beside its value with ``has_aux=True`` (the driver
        keeps it for the iterate: ``res.aux``); ``None`` otherwise. Methods ignore it.
    """

    x: PyTree
    f: jax.Array
    g: PyTree
    hess: jax.Array | None = None
    aux: Any = None
    fun_aux: Any = None


class StepOutcome(NamedTuple):
    """What a step tells the driver.

    Attributes:
      accepted: the evaluated point becomes the new iterate (one iteration done).
      failed: the method cannot go on (its line search failed); ends the solve with
        ``Status.LINESEARCH_FAILED``.
      blocked_norm: the inf-norm of the part of the step to the evaluated point that the
        box cut off (projected methods without a line search). ``xtol`` judges the
        larger of it and the change in x: x held still by a bound while the method pushes
        on (Adam's velocity turning around) has not stopped. ``None``: nothing was cut.
      stop: for a stepper with ``own_stopping``: the ``Status`` its own stopping rules
        reached on this trip (CONVERGED, FTOL, XTOL), or ``RUNNING`` (-1) to go on; read
        on the first trip too (x0 may already satisfy them). ``None`` otherwise.
    """

    accepted: jax.Array | bool
    failed: jax.Array | bool = False
    blocked_norm: jax.Array | None = None
    stop: jax.Array | None = None


class Stepper(NamedTuple):
    """A method's pure functions, built for one set of options.

    Attributes:
      init: ``(ev0, box) -> (state, x_trial)``: from the evaluation at the (projected)
        x0, the initial state and the first point to evaluate.
      step: ``(state, ev, box) -> (state, x_trial, StepOutcome)``: consume the
        evaluation at the last trial point. ``state`` must keep its types and dtypes.
        With ``step_starts``, ``(state, ev, box, first)``: the one convention the driver
        calls (``_loop.starting_stepper`` gives it to a stepper written without).
      uses_ftol: the driver applies scipy's relative-reduction rule (``ftol``).
      has_memory: the update carries momentum, so a small gradient at one iterate does
        not mean the method has come to rest (Adam coasts through a saddle); the driver
        then asks for ``gtol`` to hold at two consecutive iterates (at x0 one is enough:
        the method has not moved yet), and for ``xtol`` at ``still_steps`` steps in a
        row (an update lost to rounding while the velocity goes on is no stall).
      step_starts: ``step`` also takes ``first`` (a bool array): true on the solve's first
        trip, when ``ev`` is at x0 and ``state`` is a placeholder of ``init``'s types
        (zeros, or a finished problem's state in ``minimize_batch``). ``step`` must then
        return ``init(ev, box)``'s state and trial without reading ``state`` (its outcome
        is ignored). The driver only uses ``init`` for its types then, so the compiled
        program has one copy of the method instead of two, and a batch lane starts a new
        problem without a separate pass over its state. Otherwise ``init`` runs on the
        first trip and ``step`` on the others, picked by a ``lax.cond`` (under ``vmap`` a
        select: both run; see ``_loop.starting_stepper``).
      rejects_nonfinite: ``step`` treats a trial where f or the gradient is not finite
        as a rejected trial of its line search (it arrives with ``ev.f = +inf``) and
        asks for another point; the solve ends with ``Status.NONFINITE`` only if the
        step then reports ``failed``. Otherwise (methods without a line search) the
        first non-finite evaluation after x0 ends the solve with ``NONFINITE``.
      still_steps: for ``has_memory``: how many steps in a row x must hold still
        (``xtol``) before the solve stops with XTOL; an int or an array (from traced
        options). ``None``: ``_loop.STILL_STEPS``. A few times the rule's memory (the
        momentum's ``1 / (1 - momentum)``, Adam's ``1 / (1 - max(b1, b2))``): its velocity or its
        moments must have settled before x staying put means it will stay.
      own_stopping: the method applies its own convergence rules (the least-squares
        methods: scipy's ``ftol``/``xtol``/``gtol`` of ``least_squares``) and reports
        them in ``StepOutcome.stop``; the driver's gtol/ftol/xtol rules are off, while
        NONFINITE, a failed search, ``maxiter`` and ``maxfun`` still apply. Requires
        ``step_starts``.
    """

    init: Callable[[Evaluation, Box | None], tuple[State, PyTree]]
    step: Callable[..., tuple[State, PyTree, StepOutcome]]
    uses_ftol: bool = False
    has_memory: bool = False
    step_starts: bool = False
    rejects_nonfinite: bool = False
    own_stopping: bool = False
    still_steps: Any = None


class Method(NamedTuple):
    """A registered optimization method.

    Attributes:
      name: what users pass as ``method`` (matched case-insensitively).
      make: ``opts -> Stepper``. ``opts`` maps every option name to its value: static
        options and ``None`` as Python values, numeric ones as (possibly traced) arrays.
      options: the method's own options; the common ones (``maxiter``, ``gtol``, ...) are
        added by the driver unless the method lists them itself (e.g. another default).
      supports_bounds: the method accepts ``bounds``; then every point it asks to have
        evaluated must lie in the box.
      needs_hessian: the driver also evaluates the Hessian (``Evaluation.hess``).
      default_maxiter: ``maxiter`` when the user gives none.
      prepare: ``(objective, opts) -> objective``, or ``None``. Called at the front door
        with the user's objective (``_problem.Objective``) and the resolved options,
        before anything is traced: it raises ``ValueError`` for option values that do
        not fit together (PG without ``physics``) and returns the objective the driver
        evaluates (PG: ``x -> L(physics(x))``). The returned object must be hashable (it
        keys the jit cache) and offer ``check``, ``value_and_grad`` and ``evaluate`` as
        ``Objective`` does.
      long_tail: a few problems per thousand run to the evaluation cap (least squares'
        ``max_nfev``, as scipy's): on CPU the queue then takes fewer lanes
        (``_programs.default_lanes``), so that few idle on that tail.
    """

    name: str
    make: Callable[[Mapping[str, Any]], Stepper]
    options: tuple[Option, ...] = ()
    supports_bounds: bool = False
    needs_hessian: bool = False
    default_maxiter: int = 1000
    prepare: Callable[[Any, Mapping[str, Any]], Any] | None = None
    long_tail: bool = False
