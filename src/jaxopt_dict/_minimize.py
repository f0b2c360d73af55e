"""The front door: canonicalize -> validate (no tracing) -> dispatch -> loop -> result."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._loop import NO_CALLBACK_TOKEN, new_callback_token, pop_callback_error
from jaxopt_dict._method import Box, Method
from jaxopt_dict._options import Option, option_specs, resolve_options, split_static
from jaxopt_dict._problem import (
    canonicalize_bounds,
    canonicalize_x0,
    check_args,
    inside_transformation,
    make_objective,
    refuse_differentiated_closure,
)
from jaxopt_dict._programs import SolveStatic, solve
from jaxopt_dict._progress import require_tqdm
from jaxopt_dict._result import OptimizeResult
from jaxopt_dict._tree import WRAPPING_TRACERS
from jaxopt_dict.methods import method_names, methods_with_bounds, resolve_method

PyTree = Any


# scipy options that cannot mean anything here: gradients are JAX's, exact.
_FINITE_DIFFERENCE_OPTIONS = ("eps", "finite_diff_rel_step")


def scipy_spellings(options: dict, specs: tuple[Option, ...], method: str) -> dict:
    """scipy's habits, read as scipy means them where they mean something here: ``disp``
    as an int (> 0: print), ``iprint`` (< 0: silent, else one line per iteration);
    scipy's finite-difference steps are refused with the reason (the gradient is exact).
    """
    own = {spec.name for spec in specs}
    disp = options.get("disp")
    if isinstance(disp, (int, np.integer)) and not isinstance(disp, (bool, np.bool_)):
        options["disp"] = bool(disp > 0)
    if "iprint" in options and "iprint" not in own:
        iprint = options.pop("iprint")
        if isinstance(iprint, (bool, np.bool_)) or not isinstance(iprint, (int, np.integer)):
            raise ValueError(f"options['iprint'] must be an int (scipy's), got {iprint!r}.")
        if "disp" in options and bool(options["disp"]) != (iprint >= 0):
            raise ValueError("options 'disp' and 'iprint' disagree; give one of them.")
        options["disp"] = bool(iprint >= 0)
    for name in _FINITE_DIFFERENCE_OPTIONS:
        if name in options and name not in own:
            raise TypeError(
                f"options[{name!r}] is scipy's finite-difference step, and method {method!r} "
                "uses JAX's exact gradient: there is no step to set. Remove it."
            )
    return options


def prepare_solve(fun, x0, args, method, jac, bounds, tol, options, callback, has_aux=False):
    """Validate and canonicalize ``minimize``'s inputs before anything is traced.

    Returns:
      ``(static, x0, args, dynamic, box)``: the hashable static part, the canonical x0, the
      args to solve with (the user's, after a hidden leading entry holding the arrays
      ``fun``/``jac`` hold, if they hold any: ``_problem.make_objective``), the
      numeric options as arrays, and the canonical bounds (or ``None``).
    """
    method_rec = resolve_method(method)
    x0 = canonicalize_x0(x0)
    check_args(args)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable.")
    if not isinstance(has_aux, (bool, np.bool_)):
        raise TypeError(f"has_aux must be True or False, got {has_aux!r}.")
    if jac is False:  # scipy: "no gradient given"; here JAX's exact one, as for None
        jac = None
    objective, args = make_objective(fun, jac, bool(has_aux), args, x0)
    box = canonicalize_bounds(bounds, x0)
    if box is not None and not method_rec.supports_bounds:
        raise ValueError(
            f"Method {method_rec.name!r} does not take bounds; methods that do: "
            f"{', '.join(methods_with_bounds())}."
        )
    specs = option_specs(method_rec)
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}.")
    options = scipy_spellings(dict(options or {}), specs, method_rec.name)
    if tol is not None:
        for name in ("gtol", "ftol"):
            if any(spec.name == name for spec in specs):
                options.setdefault(name, tol)
    values = resolve_options(method_rec.name, specs, options)
    if values["progress"]:
        require_tqdm()  # the bar is tqdm's, an optional dependency
    if values.get("trace"):
        # The trace holds x and f for iterations 0..maxiter, allocated up front: refuse a
        # buffer no one meant to ask for (n = 1e5 float64 at maxiter 15000 is 12 GB). f's
        # dtype is taken as x0's leaves' promoted one (its share is negligible anyway).
        x0_leaves = jax.tree.leaves(x0)
        row_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in x0_leaves)
        row_bytes += jnp.result_type(*x0_leaves).itemsize
        trace_bytes = (values["maxiter"] + 1) * row_bytes
        if trace_bytes > 2**30:
            raise ValueError(
                f"options['trace'] would allocate {trace_bytes / 1e9:.1f} GB up front "
                f"(x and f for iterations 0..maxiter={values['maxiter']}); lower "
                "options['maxiter'], or drop trace."
            )
    if method_rec.prepare is not None:  # PG: requires physics; its driver sees L(physics(x)).
        if has_aux:
            raise ValueError(f"has_aux=True is not supported by method {method_rec.name!r}.")
        objective = method_rec.prepare(objective, values)
    objective.check(x0, args)
    if values["adjoint"] == "implicit" and inside_transformation():
        # Callables kept in the program (PG's physics) closing over a differentiated value.
        for name, fn, example, fix in getattr(objective, "closures", lambda _: ())(x0):
            refuse_differentiated_closure(fn, name, example, fix)
    if values["adjoint"] == "unrolled":
        if isinstance(values["maxfun"], jax.core.Tracer):
            raise ValueError(
                "options['adjoint']='unrolled' sizes its loop by options['maxfun'], which "
                "must then be a Python int, not a traced value."
            )
        # The unrolled loop's length follows maxfun: structural there.
        specs = tuple(spec._replace(static=spec.name == "maxfun" or spec.static) for spec in specs)
    static_opts, dynamic = split_static(specs, values)
    return SolveStatic(method_rec, objective, static_opts, callback), x0, args, dynamic, box


def minimize(
    fun: Callable[..., Any],
    x0: PyTree,
    args: tuple = (),
    method: str | Method | optax.GradientTransformation | None = "L-BFGS-B",
    *,
    jac: bool | Callable[..., PyTree] | None = None,
    bounds: tuple[Any, Any] | None = None,
    tol: float | None = None,
    options: Mapping[str, Any] | None = None,
    callback: Callable[[OptimizeResult], Any] | None = None,
    has_aux: bool = False,
) -> OptimizeResult:
    """Minimize a scalar function of a pytree, scipy-style, in one compiled loop.

    Args:
      fun: ``fun(x, *args) -> scalar``, JAX-traceable; ``x`` has x0's structure.
      x0: a pytree of floating arrays (leaves of any shapes; float32/float64 each kept).
      args: a tuple of pytrees passed to ``fun``; may hold traced values.
      method: a name (case-insensitive, see ``method_names()``), a ``Method``, or an
        ``optax.GradientTransformation`` run to convergence; ``None`` means the default,
        ``"L-BFGS-B"``, with or without bounds (scipy's ``None`` picks BFGS without them).
      jac: ``None`` or ``False`` (``jax.value_and_grad``: exact, where scipy would take
        finite differences), ``True`` (``fun`` returns ``(f, grad)``), or a callable
        ``jac(x, *args)`` returning the gradient.
      bounds: ``None``, ``(lower, upper)`` (each side None, a scalar, or a pytree like
        x0), a ``scipy.optimize.Bounds``, or scipy's sequence of ``(lo, hi)`` pairs, one
        per coordinate of x0 in flattened order (read as pairs wherever both could apply).
      tol: sets ``gtol`` (and ``ftol`` where the method uses it) unless options give them.
      options: method options (``maxiter``, ``gtol``, ``learning_rate``, ...). scipy's
        ``disp`` as an int and ``iprint`` are read as scipy means them (print or not);
        its finite-difference ``eps`` is refused (there is none). ``disp=True`` prints
        one line per iteration (under ``jax.vmap``, labelled ``problem i``) and a final
        message. ``progress=True`` shows a tqdm progress bar (iterations of maxiter, with
        f and |pg|_inf; under ``jax.vmap``, of the problem furthest along), redrawn at
        most a few times a second; it needs tqdm installed (``ImportError`` otherwise).
        ``adjoint``: ``"implicit"`` (default) or ``"unrolled"`` (see Returns).
      has_aux: ``fun`` returns ``(value, aux)`` (with ``jac=True``: ``((value, aux),
        grad)``); ``res.aux`` is aux at ``res.x`` (differentiable like ``res.x``).
      callback: ``callback(intermediate_result)`` on the host after every iteration
        (under ``jax.vmap``, once per problem with that problem's result).
        Raising ``StopIteration`` in it ends the solve with ``Status.CALLBACK_STOP`` and
        the current iterate (as in scipy >= 1.11); any other exception ends it and is
        raised here as itself (inside a user's ``jit``, JAX reports it wrapped).

    Returns:
      An ``OptimizeResult``; ``res.x`` has x0's structure, shapes and dtypes. A line
      search backs away from trial points where f or the gradient is not finite; the
      solve ends ``NONFINITE`` (with the last finite iterate) only where it cannot.
      ``FTOL``/``XTOL`` count as success only if ``res.fun < f(x0)``.
      Derivatives of ``res.x`` with respect to ``args`` are implicit (at the solution);
      with respect to ``x0`` and the numeric options they are zero. With
      ``options={"adjoint": "unrolled"}`` they are those of the iterations as computed
      (x0, args, bounds and numeric options alike): a checkpointed scan of at most
      ``maxfun`` trips (``maxiter + 1`` without a line search), reverse memory about
      2 sqrt(trips) loop states; no callback, disp or progress then.

    Raises:
      TypeError: wrong kinds of input (non-float x0 leaves, non-scalar fun, unknown option).
      ValueError: wrong values (bad bounds, unknown method, option out of range).
      ImportError: ``options["progress"]`` without tqdm installed.

    Examples:
      >>> import jax.numpy as jnp, jaxopt_dict as jd
      >>> res = jd.minimize(lambda x: jnp.sum((x["a"] - 1.0) ** 2) + x["b"] ** 2,
      ...                   {"a": jnp.zeros(3), "b": jnp.asarray(2.0)}, method="GD")
      >>> bool(res.success), [round(float(v), 4) for v in res.x["a"]]
      (True, [1.0, 1.0, 1.0])
    """
    static, x0, args, dynamic, box = prepare_solve(
        fun, x0, args, method, jac, bounds, tol, options, callback, has_aux
    )
    return solve_reporting_errors(static, x0, args, dynamic, box)


def solve_reporting_errors(
    static: SolveStatic, x0: PyTree, args: tuple, dynamic: dict, box: Box | None
) -> OptimizeResult:
    """The compiled solve; an exception the callback raised reaches the caller as itself
    where the program runs now (outside a user's jit)."""
    if static.callback is None:
        return solve(static, x0, args, dynamic, box)
    # Outside a user's jit the program runs now, so an exception the callback raises can
    # reach the caller as itself: the callback keeps it and stops the solve (``_loop``).
    # (Under a user's vmap or grad outside jit it runs now too: over concrete values.)
    runs_now = _values_if_run_now((x0, args, dynamic, box)) is not None
    token = new_callback_token() if runs_now else NO_CALLBACK_TOKEN
    dynamic["callback_token"] = jnp.asarray(token, jnp.int32)
    try:
        res = solve(static, x0, args, dynamic, box)
        if runs_now:
            jax.block_until_ready(_values_if_run_now(res))
    finally:
        error = pop_callback_error(token)
    if error is not None:
        raise error
    return res


def _values_if_run_now(tree: PyTree) -> list | None:
    """The concrete arrays under ``tree``'s leaves if a computation on it runs now: no
    tracer, or only ``vmap``/``jvp`` tracers over concrete values (a user's ``vmap`` or
    ``grad`` outside ``jit``); ``None`` where it is being staged (a user's ``jit``)."""
    values = []
    for leaf in jax.tree.leaves(tree):
        while isinstance(leaf, jax.core.Tracer):
            # Named, not duck-typed: a jit's tracer has a ``val`` too. Any other tracer
            # (or a renamed one) counts as staged: the exception is then wrapped, not lost.
            inner_of = WRAPPING_TRACERS.get(type(leaf).__name__)  # (they run at once)
            if inner_of is None:
                return None
            leaf = getattr(leaf, inner_of)
        values.append(leaf)
    return values


__all__ = ["method_names", "minimize", "option_specs"]
