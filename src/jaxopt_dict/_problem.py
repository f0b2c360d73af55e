"""Turn the user's ``fun``/``jac``/``args``/``x0``/``bounds`` into canonical pieces.

Everything here runs before tracing: bad input gets a clear error naming the offending key
path instead of a stack trace from inside a compiled loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._callable import Skeleton, rebuild, split_callable
from jaxopt_dict._method import Box, Evaluation
from jaxopt_dict._tree import in_manual_mesh, varies_over_manual_axes, vary_over_manual_axes
from jaxopt_dict._tree import ravel as ravel_pytree

PyTree = Any


def _path(path) -> str:
    return jax.tree_util.keystr(path) or "(root)"


def check_args(args: Any) -> None:
    """``args`` must be a tuple of pytrees of arrays and numbers: they travel into the
    compiled solve as data (traced), as x0 does.

    Raises:
      TypeError: ``args`` is not a tuple, or a leaf is not an array or a number (a
        function, a string): the message names it, and says where such things go.
    """
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple, got {type(args).__name__}.")
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        if isinstance(leaf, jax.Array):
            continue  # any dtype: bfloat16, a PRNG key
        if isinstance(leaf, (np.ndarray, np.generic)):
            numeric = leaf.dtype.kind in "biufcV"  # V: ml_dtypes' bfloat16 and the like
        else:
            numeric = isinstance(leaf, (int, float, complex))
        if not numeric:
            raise TypeError(
                f"args{jax.tree_util.keystr(path)} is a {type(leaf).__name__}, not an array or "
                "a number: args are data, traced into the compiled solve. Pass functions and "
                "other settings inside fun instead (a functools.partial, a closure, or an "
                "object whose attributes they are)."
            )


def canonicalize_x0(x0: PyTree) -> PyTree:
    """Check that every leaf of ``x0`` is a real floating array and make it a jax array.

    Raises:
      TypeError: an integer, boolean, complex or non-numeric leaf, or a half-precision
        (float16, bfloat16) one.
      ValueError: ``x0`` has no leaves.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(x0)
    if not leaves_with_path:
        raise ValueError("x0 has no array leaves: there is nothing to optimize.")
    leaves = []
    for path, leaf in leaves_with_path:
        if isinstance(leaf, (bool, np.bool_, int, np.integer)):
            raise TypeError(
                f"x0{_path(path)} is an integer or boolean ({leaf!r}); x0 must hold floating "
                "arrays (write 1.0, not 1)."
            )
        if isinstance(leaf, jax.Array):  # (tracers too) already JAX's: no conversion
            dtype = leaf.dtype
        else:
            try:
                dtype = jnp.result_type(leaf)
            except TypeError as err:
                raise TypeError(f"x0{_path(path)} is not an array: {type(leaf).__name__}.") from err
            leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"x0{_path(path)} has dtype {dtype}; x0 must hold real floating arrays "
                "(float32 or float64)."
            )
        if jnp.finfo(dtype).bits < 32:
            raise TypeError(
                f"x0{_path(path)} has dtype {dtype}: the stopping tests (gtol, ftol, one ulp "
                "of f) cannot be resolved in half precision; use float32 (or float64)."
            )
        leaves.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, leaves)


_ROUNDED_INWARD = (np.float16, np.float32, np.float64)  # dtypes numpy steps by one ulp


def _cast_bound(value: Any, dtype: Any, toward: float) -> tuple[Any, Any]:
    """A bound in x's dtype, twice: rounded to nearest, and rounded into the user's box
    (``toward`` +inf for a lower bound, -inf for an upper): a concrete bound that the cast
    moves outside it (``upper=0.1`` in float32 rounds to 0.10000000149) moved one ulp
    back. Traced bounds are rounded to nearest, both times.

    Concrete bounds stay NumPy arrays: built with eager ``jnp`` operations (one dispatch
    each), the box cost about 0.6 ms of every top-level ``minimize`` with bounds, more
    than a small solve itself."""
    if isinstance(value, jax.core.Tracer):
        cast = jnp.asarray(value, dtype)
        return cast, cast
    wide = np.asarray(value)
    if wide.dtype.kind not in "biuf":
        cast = jnp.asarray(value, dtype)  # JAX's own error for what is not a number
        return cast, cast
    nearest = wide.astype(dtype)
    if dtype not in _ROUNDED_INWARD or wide.dtype.kind == "b" or wide.dtype == dtype:
        return nearest, nearest
    outside = nearest < wide if toward > 0 else nearest > wide  # compared in the wider type
    return nearest, np.where(outside, np.nextafter(nearest, nearest.dtype.type(toward)), nearest)


def _broadcast(bound: Any, shape: tuple) -> Any:
    if isinstance(bound, np.ndarray):
        return np.broadcast_to(bound, shape)
    return jnp.broadcast_to(bound, shape)


def _bound_side(side: Any, x0: PyTree, name: str, fill: float) -> tuple[PyTree, PyTree]:
    """One side of ``bounds`` as pytrees with x0's structure, shapes and dtypes: rounded
    to nearest, and rounded into the box (``_cast_bound``; ``fill`` is the side's
    infinity, -inf for ``lower``). Concrete leaves are NumPy arrays, traced ones JAX's."""
    toward = -fill
    x_leaves, x_def = jax.tree.flatten(x0)
    if side is None:
        sides = [np.full(x.shape, fill, x.dtype) for x in x_leaves]
        return x_def.unflatten(sides), x_def.unflatten(sides)
    if isinstance(side, (int, float, np.number)) or (
        isinstance(side, (np.ndarray, jax.Array)) and side.ndim == 0
    ):
        pairs = [_cast_bound(side, x.dtype, toward) for x in x_leaves]
        shaped = [[_broadcast(v, x.shape) for v in pair] for pair, x in zip(pairs, x_leaves)]
        return x_def.unflatten([p[0] for p in shaped]), x_def.unflatten([p[1] for p in shaped])
    x_paths = jax.tree_util.tree_flatten_with_path(x0)[0]
    b_paths, b_def = jax.tree_util.tree_flatten_with_path(side, is_leaf=lambda v: v is None)
    if b_def != x_def:
        x_keys = {_path(p) for p, _ in x_paths}
        b_keys = {_path(p) for p, _ in b_paths}
        missing = sorted(x_keys - b_keys)
        extra = sorted(b_keys - x_keys)
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected {', '.join(extra)}")
        if not detail:
            detail.append(f"container types differ: {b_def} vs x0's {x_def}")
        raise ValueError(f"bounds {name} does not have x0's structure: {'; '.join(detail)}.")
    nearest, inward = [], []
    for (path, x), (_, b) in zip(x_paths, b_paths):
        if b is None:
            nearest.append(np.full(x.shape, fill, x.dtype))
            inward.append(nearest[-1])
            continue
        try:
            shape = np.broadcast_shapes(np.shape(b), x.shape)
        except ValueError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"bounds {name}{_path(path)} has shape {np.shape(b)}, which does not "
                f"broadcast to x0{_path(path)}'s shape {x.shape}."
            )
        for out, v in zip((nearest, inward), _cast_bound(b, x.dtype, toward)):
            out.append(_broadcast(v, x.shape))
    return x_def.unflatten(nearest), x_def.unflatten(inward)


def _is_scalar_bound(value: Any) -> bool:
    """``None``, a number, or a 0-d array (concrete or traced): one side of a scipy pair."""
    if value is None or isinstance(value, (int, float, np.number)):
        return True
    return isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0


def _is_scipy_pair(item: Any) -> bool:
    """A ``(lo, hi)`` pair of scipy's sequence-of-pairs format."""
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and all(_is_scalar_bound(v) for v in item)
    )


def _from_pairs(pairs: tuple | list, x0: PyTree) -> tuple[PyTree, PyTree]:
    """scipy's ``[(lo, hi), ...]``, one pair per coordinate in ``ravel_pytree`` order, as
    ``(lower, upper)`` pytrees with x0's structure (``None`` = unbounded on that side)."""
    lower = [-jnp.inf if lo is None else lo for lo, _ in pairs]
    upper = [jnp.inf if hi is None else hi for _, hi in pairs]
    if not any(isinstance(v, jax.core.Tracer) for v in lower + upper):
        return _unravel_exact(np.asarray(lower), x0), _unravel_exact(np.asarray(upper), x0)
    flat, unravel = ravel_pytree(x0)
    return unravel(jnp.asarray(lower, flat.dtype)), unravel(jnp.asarray(upper, flat.dtype))


def _unravel_exact(flat: np.ndarray, x0: PyTree) -> PyTree:
    """Concrete values over x0's flattened coordinates as a pytree of x0's structure and
    shapes, in their own (wider) dtype: ``_cast_bound`` rounds each into x's dtype
    inward, which a cast to the flattened dtype here would pre-empt (to nearest)."""
    leaves, treedef = jax.tree.flatten(x0)
    sizes = [np.size(leaf) for leaf in leaves]
    parts = np.split(np.broadcast_to(flat, (sum(sizes),)), np.cumsum(sizes)[:-1])
    return treedef.unflatten([p.reshape(np.shape(v)) for p, v in zip(parts, leaves)])


def _from_flat(values: Any, x0: PyTree, name: str, fill: float) -> PyTree:
    """One side of a ``scipy.optimize.Bounds`` (a scalar or an array over x0's flattened
    coordinates, in ``ravel_pytree`` order) as a pytree with x0's structure."""
    flat, unravel = ravel_pytree(x0)
    if values is None:
        values = fill
    try:
        fits = np.broadcast_shapes(np.shape(values), flat.shape) == flat.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"Bounds.{name} has shape {np.shape(values)}; a scipy.optimize.Bounds takes a "
            f"scalar or an array of x0's flattened size ({flat.size},), in ravel_pytree order."
        )
    if not isinstance(values, jax.core.Tracer):
        return _unravel_exact(np.asarray(values), x0)
    return unravel(jnp.broadcast_to(jnp.asarray(values, flat.dtype), flat.shape))


def _lower_upper(bounds: Any, x0: PyTree) -> tuple[Any, Any]:
    """``(lower, upper)`` from any of the accepted formats (SPEC section 1), never guessing:
    a ``scipy.optimize.Bounds`` (duck-typed: ``lb`` and ``ub``); scipy's sequence of
    ``(lo, hi)`` pairs, one per coordinate (it wins where ``(lower, upper)`` could also
    apply: x0 with two coordinates); else ``(lower, upper)``."""
    if hasattr(bounds, "lb") and hasattr(bounds, "ub") and not isinstance(bounds, (tuple, list)):
        return _from_flat(bounds.lb, x0, "lb", -jnp.inf), _from_flat(bounds.ub, x0, "ub", jnp.inf)
    if isinstance(bounds, np.ndarray) and bounds.ndim == 2 and bounds.shape[1] == 2:
        bounds = [tuple(row) for row in bounds.tolist()]  # scipy's pairs as an (n, 2) array
    if not isinstance(bounds, (tuple, list)):
        raise ValueError(  # noqa: TRY004 (SPEC section 7: bounds that fit no format)
            "bounds must be None, a pair (lower, upper) (each side None, a scalar, or a pytree "
            "with x0's structure), a sequence of (lo, hi) pairs, one per coordinate of x0, or "
            f"a scipy.optimize.Bounds; got {type(bounds).__name__}."
        )
    if bounds and all(_is_scipy_pair(item) for item in bounds):
        # (optax.tree.size is not in optax 0.2.5, the floor)
        n_coordinates = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(x0))
        if len(bounds) == n_coordinates:
            return _from_pairs(bounds, x0)
        two_sides_like_x0 = len(bounds) == 2 and all(
            jax.tree.structure(side, is_leaf=lambda v: v is None) == jax.tree.structure(x0)
            for side in bounds
        )
        if not two_sides_like_x0:  # (lower, upper) cannot apply either: not a guess.
            raise ValueError(
                f"bounds is a sequence of {len(bounds)} (lo, hi) pairs (scipy's format), but "
                f"x0 has {n_coordinates} coordinates: expected {n_coordinates} pairs, one per "
                "coordinate of x0 in flattened (ravel_pytree) order."
            )
    if len(bounds) != 2:
        raise ValueError(
            "bounds must be None, a pair (lower, upper) (each side None, a scalar, or a pytree "
            "with x0's structure), a sequence of (lo, hi) pairs, one per coordinate of x0, or "
            f"a scipy.optimize.Bounds; got a sequence of length {len(bounds)}."
        )
    return bounds[0], bounds[1]


def canonicalize_bounds(bounds: Any, x0: PyTree) -> Box | None:
    """The user's ``bounds`` -> a ``Box`` of full pytrees, or ``None`` if unbounded.

    Accepts ``None``, ``(lower, upper)``, scipy's sequence of ``(lo, hi)`` pairs and a
    ``scipy.optimize.Bounds`` (see ``_lower_upper``). Bounds infinite everywhere (and
    concrete) are no bounds: ``None``, so that every method accepts them.

    Raises:
      ValueError: a format that is none of these, a pair count that is not x0's coordinate
        count, structure or shape mismatch (naming the key path), NaN, a lower bound of
        +inf, an upper bound of -inf, or lower > upper (checked where concrete; traced
        bounds are trusted).
    """
    if bounds is None:
        return None
    # Concrete bounds stay concrete inside a user's jit (and get checked); traced ones trace.
    with jax.ensure_compile_time_eval():
        lower, upper = _lower_upper(bounds, x0)
        if lower is None and upper is None:
            return None
        lower, lower_inward = _bound_side(lower, x0, "lower", -np.inf)
        upper, upper_inward = _bound_side(upper, x0, "upper", np.inf)
    unbounded = True  # every bound concrete and infinite
    for (path, lo), hi in zip(
        jax.tree_util.tree_flatten_with_path(lower)[0], jax.tree.leaves(upper)
    ):
        if isinstance(lo, jax.core.Tracer) or isinstance(hi, jax.core.Tracer):
            unbounded = False
            continue
        lo, hi = np.asarray(lo), np.asarray(hi)
        if np.isnan(lo).any() or np.isnan(hi).any():
            raise ValueError(f"bounds{_path(path)} contain NaN.")
        if (lo == np.inf).any():
            raise ValueError(
                f"bounds lower{_path(path)} is +inf at some entries: no point lies above it "
                "(-inf, or None, means no lower bound)."
            )
        if (hi == -np.inf).any():
            raise ValueError(
                f"bounds upper{_path(path)} is -inf at some entries: no point lies below it "
                "(+inf, or None, means no upper bound)."
            )
        if (lo > hi).any():
            raise ValueError(f"bounds{_path(path)}: lower > upper at some entries.")
        unbounded = unbounded and bool((lo == -np.inf).all() and (hi == np.inf).all())
    if unbounded:
        return None

    # Every point evaluated lies inside the user's box, also where x's dtype cannot hold a
    # bound exactly: rounded inward, unless no point of that dtype lies between the two
    # (equal bounds at 0.1 in float32: then nearest, as checked above).
    def keep_inside(lo_in, hi_in, lo, hi):
        if isinstance(lo_in, jax.core.Tracer) or isinstance(hi_in, jax.core.Tracer):
            return lo, hi
        crossed = np.asarray(lo_in) > np.asarray(hi_in)
        return np.where(crossed, lo, lo_in), np.where(crossed, hi, hi_in)

    pairs = [
        keep_inside(*leaves)
        for leaves in zip(*map(jax.tree.leaves, (lower_inward, upper_inward, lower, upper)))
    ]
    treedef = jax.tree.structure(x0)
    return Box(treedef.unflatten([p[0] for p in pairs]), treedef.unflatten([p[1] for p in pairs]))


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)), tree)


# Objectives (with their input types) whose ``check`` passed, oldest first: a bounded
# record, since each holds the user's callables.
_CHECKED: dict = {}
_CHECKED_MAX = 256
_CHECKED_LOCK = threading.Lock()  # solves may run in several threads


class Objective(NamedTuple):
    """``fun`` and ``jac`` as the user gave them; hashable, so it can key the jit cache.

    With ``has_aux``, ``fun`` returns ``(value, aux)`` (with ``jac=True``:
    ``((value, aux), grad)``); ``aux`` is any pytree of arrays, kept for the iterate.

    With ``data_in_args``, ``fun`` and ``jac`` are skeletons (``_callable.split_callable``)
    and ``args[0]`` is ``(fun's data, jac's data)``, the arrays they hold: a hidden leading
    arg, so that new values do not recompile and derivatives in them are implicit, as for
    the user's args. ``bind`` puts the callables back together (see ``make_objective``)."""

    fun: Any  # a callable (a Skeleton with data_in_args)
    jac: Any = None  # None, True, or a callable
    has_aux: bool = False
    data_in_args: bool = False

    def bind(self, args: tuple) -> tuple[Callable[..., Any], Any, tuple]:
        """``(fun, jac, user_args)``: the callables holding their data, and the user's args."""
        if not self.data_in_args:
            return self.fun, self.jac, args
        (fun_data, jac_data), args = args[0], args[1:]
        return rebuild(self.fun, fun_data), rebuild(self.jac, jac_data), args

    def check(self, x0: PyTree, args: tuple) -> None:
        """Trace ``fun`` abstractly once (no compilation) and check what it returns; a
        check that passed is not repeated for the same objective and input types (about
        half of a warm top-level ``minimize``'s own time, 30-50 us, was this trace).

        Raises:
          TypeError: non-scalar or non-float value, a ``jac=True`` fun that does not return
            a pair, or a gradient whose structure or leaf shapes differ from x0's.
        """
        leaves, treedef = jax.tree.flatten((x0, args))
        key = (self, treedef, tuple(map(jax.typeof, leaves)))
        if key in _CHECKED:
            return
        self._check(x0, args)
        with _CHECKED_LOCK:
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.pop(next(iter(_CHECKED)))  # the oldest
            _CHECKED[key] = None

    def _check(self, x0: PyTree, args: tuple) -> None:
        fun, jac, _ = self.bind(args)
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}.")
        if not (jac is None or jac is True or callable(jac)):
            raise TypeError("jac must be None, True, or a callable returning the gradient.")

        out = _fun_shape(self, _abstract(x0), _abstract(args))
        if self.jac is True:
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise TypeError(
                    "jac=True means fun returns (value, gradient), but it returned "
                    f"{jax.tree.structure(out)}."
                )
            value, grad = out
            if self.has_aux:
                value = self._split_aux(value, "((value, aux), gradient)")
        elif self.has_aux:
            value = self._split_aux(out, "(value, aux)")
            grad = _jac_shape(self, _abstract(x0), _abstract(args)) if callable(jac) else None
        else:
            value = out
            grad = _jac_shape(self, _abstract(x0), _abstract(args)) if callable(jac) else None
        if not isinstance(value, jax.ShapeDtypeStruct) or value.shape != ():
            raise TypeError(
                f"fun must return a scalar, got {getattr(value, 'shape', type(value).__name__)}."
            )
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"fun must return a real float, got dtype {value.dtype}.")
        if grad is None:
            return
        if jax.tree.structure(grad) != jax.tree.structure(x0):
            raise TypeError(
                f"the gradient has structure {jax.tree.structure(grad)}, but x0 has "
                f"{jax.tree.structure(x0)}."
            )
        for (path, g_leaf), x_leaf in zip(
            jax.tree_util.tree_leaves_with_path(grad), jax.tree.leaves(x0), strict=True
        ):
            if jnp.shape(g_leaf) != jnp.shape(x_leaf):
                raise TypeError(
                    f"the gradient's leaf at {jax.tree_util.keystr(path) or 'the root'} has "
                    f"shape {jnp.shape(g_leaf)}, but x0's has {jnp.shape(x_leaf)}."
                )

    @staticmethod
    def _split_aux(out: Any, form: str) -> Any:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                f"has_aux=True means fun returns {form}, but it returned {jax.tree.structure(out)}."
            )
        for leaf in jax.tree.leaves(out[1]):
            if not isinstance(leaf, jax.ShapeDtypeStruct):
                raise TypeError(f"fun's aux must be a pytree of arrays, got {leaf!r}.")
        return out[0]

    def value_grad_aux(self, x: PyTree, args: tuple) -> tuple[jax.Array, PyTree, Any]:
        """f, its gradient (in x's dtypes) and fun's aux (``None`` without has_aux), from
        one fused evaluation."""
        fun, jac, args = self.bind(args)
        aux = None
        if jac is None:
            out, g = jax.value_and_grad(fun, has_aux=self.has_aux)(x, *args)
            f, aux = out if self.has_aux else (out, None)
        elif jac is True:
            f, g = fun(x, *args)
            if self.has_aux:
                f, aux = f
        else:
            f, g = fun(x, *args), jac(x, *args)
            if self.has_aux:
                f, aux = f
        return jnp.asarray(f), optax.tree.cast_like(g, x), aux

    def value_and_grad(self, x: PyTree, args: tuple) -> tuple[jax.Array, PyTree]:
        """f and its gradient in one fused evaluation; the gradient keeps x's dtypes."""
        return self.value_grad_aux(x, args)[:2]

    def aux(self, x: PyTree, args: tuple) -> Any:
        """fun's aux at x (``has_aux=True``): what ``res.aux`` holds, and its derivative."""
        fun, _, args = self.bind(args)
        out = fun(x, *args)
        return (out[0] if self.jac is True else out)[1]

    def evaluate(self, x: PyTree, args: tuple, hessian: bool = False) -> Evaluation:
        """An ``Evaluation`` at x; with ``hessian``, the Hessian as the Jacobian of the
        gradient on the flattened parameters (``jax.jacobian`` twice, for ``jac=None``)."""
        if not hessian:
            f, g, aux = self.value_grad_aux(x, args)
            return Evaluation(x, f, g, fun_aux=aux)
        flat, unravel = ravel_pytree(x)

        def flat_grad(z):
            f, g, aux = self.value_grad_aux(unravel(z), args)
            return ravel_pytree(g)[0], (f, g, aux)

        hess, (f, g, aux) = jax.jacobian(flat_grad, has_aux=True)(flat)
        return Evaluation(x, f, g, hess, fun_aux=aux)


def _call_fun(objective: Objective, x: PyTree, args: tuple) -> Any:
    fun, _, user_args = objective.bind(args)
    return fun(x, *user_args)


def _call_jac(objective: Objective, x: PyTree, args: tuple) -> Any:
    _, jac, user_args = objective.bind(args)
    return jac(x, *user_args)


# ``Objective.check``'s abstract evaluations, cached per objective (and abstract inputs)
# as ``jax.eval_shape`` caches them per function: a repeated solve does not trace fun again.
_fun_shape = jax.jit(_call_fun, static_argnums=0).eval_shape
_jac_shape = jax.jit(_call_jac, static_argnums=0).eval_shape


def inside_transformation() -> bool:
    """Whether a JAX transformation (``jit``, ``grad``, ``vmap``, ...) is tracing the
    caller: only then can ``fun`` close over a tracer. (JAX offers no public test; where
    its internal one is missing, assume so: the price is one more trace of ``fun``.)"""
    try:
        from jax._src import core  # (internal: imported only here)

        return not core.trace_ctx.is_top_level()
    except Exception:  # noqa: BLE001 (any JAX version without it)
        return True


# Tracers of a derivative being taken of the caller's code (jvp; grad's linearization).
_DERIVATIVE_TRACERS = frozenset({"JVPTracer", "LinearizeTracer"})


class ClosureConverted:
    """``fun`` whose closure held traced values (``jax.closure_convert``): the converted
    function, and those values as an attribute. The arrays a callable holds are data
    (``_callable``), so derivatives in them are implicit, as for ``args``.

    Inside ``shard_map`` (``vary``) the converted function is typed by its example
    inputs, varying mesh axes included: x, args and the hoisted values all varied over
    every manual axis there, and are made to again at each call (the solve calls it with
    a replicated x0, the loop's varying carry, abstract values that carry no axes). That
    is a change of type only; JAX casts a replicated value the same way where it meets a
    varying one."""

    def __init__(self, fun: Callable[..., Any], consts: tuple, vary: bool = False) -> None:
        self.fun = fun
        self.consts = consts
        self.vary = vary

    def __call__(self, x: PyTree, *args: Any) -> Any:
        inputs = (x, *args, *self.consts)
        if self.vary:
            inputs = vary_over_manual_axes(inputs)
        return self.fun(*inputs)


def _closure_converted(fn: Any, x0: PyTree, args: tuple) -> Any:
    """``fn`` with the tracers its closure holds, transitively, as data.

    Under ``jax.grad`` of a function that builds ``fun`` as a closure over the variable
    (``lambda x: f(x, theta)``), the implicit derivative saw ``theta`` as a constant: the
    derivative was silently zero under ``jit``, and outside ``jit`` JAX raised "No
    constant handler for type JVPTracer". ``jax.closure_convert`` hoists them (values
    of the transformations the solve is traced under, where one may be differentiated:
    ``_may_be_differentiated``)."""
    if not in_manual_mesh():
        found = _closure_holding(fn, (x0, *args), _may_be_differentiated)
        return fn if found is None else ClosureConverted(*found)
    # Inside shard_map the converted jaxpr holds the casts JAX made while tracing: a
    # hoisted value that did not vary over every mesh axis then is cast inside it, and
    # could not be cast again. Hoisted only where every such value varies (computed from
    # sharded inputs); otherwise as before: a derivative's own tracer is refused.
    found = _closure_holding(fn, vary_over_manual_axes((x0, *args)), _may_be_differentiated)
    if found is None:
        return fn
    if all(varies_over_manual_axes(c) for c in found[1]):
        return ClosureConverted(*found, vary=True)
    if any(_is_derivative_tracer(c) for c in found[1]):
        raise _differentiated_closure_error("fun, inside shard_map,", "Pass it through args there.")
    return fn


def _may_be_differentiated(value: Any) -> bool:
    """A traced value that a derivative is, or may later be, taken in: a derivative's own
    tracer (jvp, grad's linearization), a staged one (a ``jit``, ``scan`` or
    ``checkpoint`` around the solve: JAX differentiates the staged program afterwards,
    ``jax.grad(jax.jit(f))``), or a tracer holding one (a ``vmap`` inside a ``grad``).
    Left in the closure, the implicit derivative took it for a constant: JAX raised "No
    constant handler for type DynamicJaxprTracer". A value only a ``vmap`` traces stays in
    the closure (the solve batches plainly, as the docs say)."""
    while isinstance(value, jax.core.Tracer):
        if type(value).__name__ in _DERIVATIVE_TRACERS | {"DynamicJaxprTracer"}:
            return True
        value = getattr(value, "val", None)  # a vmap's tracer: the value it batches
    return False


def _closure_holding(
    fn: Any, example_args: tuple, wanted: Callable[[Any], bool]
) -> tuple[Callable, tuple] | None:
    """``jax.closure_convert(fn, *example_args)`` as ``(converted, consts)`` where some
    const is ``wanted``; ``None`` where none is, or where ``fn`` cannot be traced (the
    front door's checks then say why)."""
    try:
        converted, consts = jax.closure_convert(fn, *example_args)
    except Exception:  # noqa: BLE001 (``Objective.check`` reports a broken fn clearly)
        return None
    if not any(wanted(c) for c in consts):
        return None
    return converted, tuple(consts)


def _is_derivative_tracer(value: Any) -> bool:
    """A derivative's own tracer (a jvp or grad being taken now): what
    ``refuse_differentiated_closure`` refuses; ``fun``'s own closure is hoisted more widely
    (``_may_be_differentiated``)."""
    return type(value).__name__ in _DERIVATIVE_TRACERS


def refuse_differentiated_closure(fn: Any, name: str, example_args: tuple, fix: str) -> None:
    """A clear error where ``fn``, a callable that is part of the compiled program (least
    squares' ``loss``, PG's ``physics``), closes over a value the caller is differentiating
    in: the implicit derivative would take it for a constant and be silently zero in it
    (outside ``jit``, JAX raised "No constant handler for type JVPTracer").

    Raises:
      ValueError: such a value is in ``fn``'s closure (transitively); ``fix`` says what to
        do instead.
    """
    found = inside_transformation() and _closure_holding(fn, example_args, _is_derivative_tracer)
    if found:
        raise _differentiated_closure_error(name, fix)


def _differentiated_closure_error(name: str, fix: str) -> ValueError:
    return ValueError(
        f"{name} closes over a value that a derivative of your code is taken in (a "
        "jax.grad or jvp variable): the solve's implicit derivative cannot see it, and "
        f"would be zero in it. {fix}"
    )


def make_objective(
    fun: Any, jac: Any, has_aux: bool, args: tuple, x0: PyTree = None
) -> tuple[Objective, tuple]:
    """The ``Objective`` for ``fun``/``jac`` and the args the solve takes.

    The arrays a callable holds are data (``_callable.split_callable``): where ``fun`` or a
    callable ``jac`` holds any, they travel as a hidden leading arg ``(fun's data, jac's
    data)`` and the objective keeps their skeletons; otherwise the objective is as the user
    gave it and ``args`` are unchanged. Given ``x0``, under a transformation, tracers in
    their closures are data too (``_closure_converted``).

    Raises:
      TypeError: a part of ``fun`` or ``jac`` that is not an array cannot be hashed.
    """
    if x0 is not None and inside_transformation():
        if callable(fun):
            fun = _closure_converted(fun, x0, args)
        if callable(jac) and jac is not True:
            jac = _closure_converted(jac, x0, args)
    fun_data = jac_data = ()
    if callable(fun):
        fun, fun_data = split_callable(fun, "fun")
    if callable(jac) and jac is not True:
        jac, jac_data = split_callable(jac, "jac")
    if not (isinstance(fun, Skeleton) or isinstance(jac, Skeleton)):
        return Objective(fun, jac, has_aux), args
    return Objective(fun, jac, has_aux, data_in_args=True), ((fun_data, jac_data),) + args
