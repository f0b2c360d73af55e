"""A drop-in for ``dict_minimize.jax_api``: the same ``minimize``, on compiled solvers.

dict-minimize (Turner, Twitter 2021) wraps ``scipy.optimize.minimize`` so that objectives
written in a deep learning framework can be optimized over an ``OrderedDict`` of arrays;
every evaluation crosses to the host and back. This module keeps its signature and
behaviour, so code written for it runs unchanged after swapping::

    from dict_minimize.jax_api import minimize     ->    from jaxopt_dict.dict_minimize import minimize

but the whole solve is one compiled ``jaxopt_dict.minimize`` loop (``jac=True``: ``fun``
returns ``(value, grad_dict)``, as there). What carries over, and what differs:

- ``method=None`` means ``"L-BFGS-B"`` (scipy would pick BFGS when there are no bounds;
  this package has no dense BFGS). Any method name of this package is accepted; a scipy
  method it does not have (``"CG"``, ``"BFGS"``, ``"TNC"``, ``"trust-constr"``, ...) raises
  ``ValueError`` naming the ones it has.
- ``lb_dict`` / ``ub_dict``: as there, dicts of arrays with x0's keys; here they may also
  name only some keys (a missing key, or a missing side, is unbounded) and their values
  broadcast to the variable's shape.
- ``callback(xk)`` gets an ``OrderedDict`` with x0's keys, shapes and dtypes, once per
  iteration.
- ``options``: this package's options for the method (scipy's names: ``maxiter``,
  ``maxfun``, ``gtol``, ``ftol``, ``maxcor``, ``maxls``, ``disp``); scipy's L-BFGS-B
  options that only matter for finite-difference gradients or Fortran printing (``eps``,
  ``iprint``, ``finite_diff_rel_step``) are accepted and ignored, as ``jac=True`` makes
  them irrelevant there too.
- Arithmetic is done in x0's dtypes (scipy works in float64 whatever the framework uses).
- A solve that does not succeed (``maxiter`` reached, a failed line search, ...) emits a
  ``RuntimeWarning`` naming the status and its message: the returned dict has no status.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from jaxopt_dict._minimize import minimize as _minimize
from jaxopt_dict._result import OptimizeResult, Status
from jaxopt_dict.methods import closest_method, method_names

DEFAULT_METHOD = "L-BFGS-B"

# scipy L-BFGS-B options with no meaning once the gradient is supplied (jac=True) and the
# solver is not the Fortran one; dict-minimize users may pass them, so they are dropped.
_IGNORED_LBFGSB_OPTIONS = ("eps", "iprint", "finite_diff_rel_step")


@dataclasses.dataclass(frozen=True)
class _OrderedGrad:
    """``fun`` with its gradient put in x's key order. Hashable by ``fun`` (so a second
    call with the same ``fun`` reuses the compiled solve) and weak-referenceable (as
    ``jax.eval_shape`` needs), hence a frozen dataclass rather than a closure.

    ``fixed``: ``(position, value)`` of the args that are not numeric data (see
    ``_split_args``), put back in place at each call: they key the compiled solve."""

    fun: Callable[..., tuple[Any, Mapping[str, Any]]]
    fixed: tuple[tuple[int, Any], ...] = ()

    def __call__(self, x, *args):
        full = list(args)
        for position, value in self.fixed:
            full.insert(position, value)
        value, grad = self.fun(x, *full)
        if not isinstance(grad, Mapping):
            raise TypeError(
                "fun must return (value, grad_dict) with grad_dict a dict keyed like x0, got "
                f"a {type(grad).__name__} for the gradient."
            )
        missing = [k for k in x if k not in grad]
        if missing:
            raise TypeError(f"the gradient dict returned by fun lacks the keys {missing}.")
        return value, OrderedDict((k, grad[k]) for k in x)


@dataclasses.dataclass(frozen=True)
class _DictCallback:
    """dict-minimize's ``callback(xk)``, fed from the driver's per-iteration result."""

    callback: Callable[[OrderedDict], Any]
    dtypes: tuple[tuple[str, Any], ...]

    def __call__(self, intermediate_result: OptimizeResult) -> None:
        x = intermediate_result.x
        self.callback(OrderedDict((k, jnp.asarray(x[k], dtype)) for k, dtype in self.dtypes))


def _method_name(method: str | None) -> str:
    if method is None:
        return DEFAULT_METHOD
    names = method_names()
    if not isinstance(method, str) or method.lower() not in {n.lower() for n in names}:
        suggestion = closest_method(method) if isinstance(method, str) else None
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        raise ValueError(
            f"jaxopt_dict.dict_minimize has no method {method!r} (scipy's methods other than "
            f"L-BFGS-B are not provided).{hint} Methods it has: {', '.join(names)}."
        )
    return method


def _bounds(lb_dict, ub_dict, x0: OrderedDict):
    if lb_dict is None and ub_dict is None:
        return None
    sides = []
    for name, side in (("lb_dict", lb_dict), ("ub_dict", ub_dict)):
        if side is None:
            sides.append(None)
            continue
        if not isinstance(side, Mapping):
            raise TypeError(f"{name} must be a dict of arrays keyed like x0_dict.")
        unknown = [k for k in side if k not in x0]
        if unknown:
            raise ValueError(f"{name} has keys that x0_dict lacks: {unknown}.")
        sides.append(OrderedDict((k, side.get(k)) for k in x0))
    return tuple(sides)


def _options(method: str, options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if options is None:
        return None
    options = dict(options)
    if method.lower() in ("l-bfgs-b", "l-bfgs"):
        for key in _IGNORED_LBFGSB_OPTIONS:
            options.pop(key, None)
    if "disp" in options:  # scipy takes an int verbosity or None.
        disp = options.pop("disp")
        if disp is not None:
            options["disp"] = bool(disp)
    return options


def minimize(
    fun: Callable[..., tuple[Any, Mapping[str, Any]]],
    x0_dict: Mapping[str, Any],
    *,
    lb_dict: Mapping[str, Any] | None = None,
    ub_dict: Mapping[str, Any] | None = None,
    args: Sequence[Any] = (),
    method: str | None = None,
    tol: float | None = None,
    callback: Callable[[OrderedDict], Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> OrderedDict:
    """Minimize ``fun`` over a dict of arrays, with dict-minimize's JAX signature.

    Args:
      fun: ``fun(x, *args) -> (value, grad_dict)``; ``x`` is an ``OrderedDict`` like
        ``x0_dict`` and ``grad_dict`` has its keys and shapes. JAX-traceable.
      x0_dict: the initial guess, name -> float array (an ``OrderedDict``; a plain dict's
        order is used as is).
      lb_dict, ub_dict: lower / upper bounds, name -> array (broadcast to the variable's
        shape); missing keys or a missing side mean unbounded.
      args: extra arguments passed to ``fun``.
      method: ``None`` (L-BFGS-B) or a method name of this package.
      tol: sets ``gtol``, and ``ftol`` where the method uses it.
      callback: ``callback(xk)`` after each iteration, ``xk`` an ``OrderedDict``.
      options: the method's options (``maxiter``, ``maxfun``, ``disp``, ...).

    Returns:
      The solution as an ``OrderedDict`` with x0_dict's keys, shapes and dtypes. A solve
      that did not succeed (e.g. ``maxiter`` reached) emits a ``RuntimeWarning`` naming the
      status and its message, as the dict carries no status.

    Raises:
      ValueError: an unknown method (the message names the available ones), bounds with
        unknown keys or shapes that do not broadcast, option values out of range.
      TypeError: ``fun`` not returning ``(value, grad_dict)``, an unknown option, a
        non-dict ``x0_dict`` or bound.

    Examples:
      >>> from collections import OrderedDict
      >>> import jax, jax.numpy as jnp
      >>> from jaxopt_dict.dict_minimize import minimize
      >>> def obj(x):
      ...     return jnp.sum((x["a"] - 2.0) ** 2) + jnp.sum(x["b"] ** 2)
      >>> x = minimize(jax.value_and_grad(obj),
      ...              OrderedDict(a=jnp.zeros(2), b=jnp.ones(3)),
      ...              ub_dict={"a": 1.5}, method="GD")
      >>> [round(float(v), 4) for v in x["a"]], float(jnp.max(jnp.abs(x["b"]))) < 1e-4
      ([1.5, 1.5], True)
    """
    if not isinstance(x0_dict, Mapping):
        raise TypeError(f"x0_dict must be a dict of arrays, got {type(x0_dict).__name__}.")
    if len(x0_dict) == 0:
        raise ValueError("x0_dict is empty: there is nothing to optimize.")
    x0 = OrderedDict((k, jnp.asarray(v)) for k, v in x0_dict.items())
    name = _method_name(method)
    callback_ = None
    if callback is not None:
        if not callable(callback):
            raise TypeError("callback must be callable.")
        callback_ = _DictCallback(callback, tuple((k, v.dtype) for k, v in x0.items()))
    data, fixed = _split_args(tuple(args))
    res = _minimize(
        _OrderedGrad(fun, fixed),
        x0,
        args=data,
        method=name,
        jac=True,
        bounds=_bounds(lb_dict, ub_dict, x0),
        tol=tol,
        options=_options(name, options),
        callback=callback_,
    )
    _warn_unless_success(res)
    return OrderedDict((k, res.x[k]) for k in x0)


def _is_data(arg: Any) -> bool:
    """Numeric data: every leaf an array or a float (traced into the solve, as
    ``minimize``'s args). Python ints, bools, strings and other objects are settings."""

    def is_number(leaf: Any) -> bool:
        if isinstance(leaf, jax.Array):
            return True
        if isinstance(leaf, (np.ndarray, np.generic)):
            return leaf.dtype.kind in "fc"  # not np.str_, ints or bools: settings too
        return isinstance(leaf, (float, complex))

    leaves = jax.tree.leaves(arg)
    return bool(leaves) and all(is_number(leaf) for leaf in leaves)


def _split_args(args: tuple) -> tuple[tuple, tuple[tuple[int, Any], ...]]:
    """``(data, fixed)``: dict-minimize runs ``fun`` in plain Python, so its args may be
    settings used as Python values (``range(power)``, ``if mode == "plus"``), which a
    traced argument cannot be. Those are bound into ``fun`` (``_OrderedGrad.fixed``)."""
    data = tuple(arg for arg in args if _is_data(arg))
    fixed = tuple((i, arg) for i, arg in enumerate(args) if not _is_data(arg))
    return data, fixed


def _warn_unless_success(res: OptimizeResult) -> None:
    """Warn when the solve did not succeed: the returned dict carries no status, so this is
    the only way a caller learns it (skipped under a user's ``jit``, where it is unknown)."""
    if isinstance(res.success, jax.core.Tracer) or bool(res.success):
        return
    warnings.warn(
        f"jaxopt_dict.dict_minimize: the solve did not succeed "
        f"({Status(int(res.status)).name}: {res.message}); the last iterate is returned.",
        RuntimeWarning,
        stacklevel=3,
    )


__all__ = ["minimize"]
