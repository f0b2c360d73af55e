"""A small zoo of well-conditioned test problems with known minimizers and NumPy twins.

Every objective is a module-level function, so ``minimize`` (which caches compiled solves
by the identity of ``fun``) reuses its compiled programs across tests. Each problem builds
x0 for a requested dtype (or a per-leaf dtype map, for mixed-precision x0), knows its
minimizer (and, with ``bounds``, the clipped minimizer of a separable objective), and has a
NumPy twin written independently of the JAX code, for scipy parity.

Problems are kept tiny and well conditioned (Hessian eigenvalues in [1, 2.5] near the
minimizer) so that every method converges in at most a few hundred iterations.
"""

from __future__ import annotations

import collections
import dataclasses
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any


class Pair(NamedTuple):
    """A NamedTuple node inside x0 (tests that custom pytree node types survive)."""

    u: Any
    v: Any


# ----------------------------------------------------------------------------------------
# Method configurations: options chosen so that each converges fast on the zoo.
# ----------------------------------------------------------------------------------------

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "GD-linesearch": ("GD", {}),
    "GD-fixed": ("GD", {"learning_rate": 0.2}),
    "momentum": ("momentum", {"learning_rate": 0.1, "momentum": 0.5}),
    "Adam": ("Adam", {"learning_rate": 0.05}),
    "Newton-linesearch": ("Newton", {}),
    "Newton-fixed": ("Newton", {"learning_rate": 0.8}),
}
# The methods that take bounds (projection after every step), SPEC section 1.
BOUNDED_METHODS = ("GD-linesearch", "GD-fixed", "momentum", "Adam")
# Fixed-step methods: one evaluation per iteration, so nfev == nit + 1.
FIXED_STEP_METHODS = ("GD-fixed", "momentum", "Adam", "Newton-fixed")


def cast_tree(tree: PyTree, dtype: Any) -> PyTree:
    """Cast every leaf to ``dtype`` (a dtype, or a function ``key path -> dtype``)."""
    if isinstance(dtype, types.FunctionType):
        return jax.tree_util.tree_map_with_path(
            lambda p, v: jnp.asarray(v, dtype(jax.tree_util.keystr(p))), tree
        )
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)


def take_row(tree: PyTree, i) -> PyTree:
    """Problem ``i`` of a batch: entry i of every leaf's leading axis."""
    return jax.tree.map(lambda v: v[i], tree)


def to_numpy(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda v: np.asarray(v, np.float64), tree)


# ----------------------------------------------------------------------------------------
# quad_mixed: a separable weighted quadratic over a dict with every kind of leaf and node.
# ----------------------------------------------------------------------------------------

_QUAD_TARGET = {
    "s": 0.5,
    "v": np.array([1.0, -2.0, 0.25]),
    "m": np.array([[0.5, -0.5], [1.5, 2.0]]),
    "nested": {"w": np.array([-1.0, 3.0])},
    "pair": Pair(u=np.array([0.75, -0.25]), v=-1.5),
}
_QUAD_WEIGHT = {
    "s": 1.0,
    "v": np.array([1.0, 1.5, 2.0]),
    "m": np.array([[1.25, 1.0], [2.0, 1.5]]),
    "nested": {"w": np.array([1.0, 2.0])},
    "pair": Pair(u=np.array([1.5, 1.0]), v=1.25),
}
_QUAD_X0 = {
    "s": 1.5,
    "v": np.array([0.0, 0.0, 1.0]),
    "m": np.array([[0.0, 1.0], [0.0, 1.0]]),
    "nested": {"w": np.array([0.0, 2.0])},
    "pair": Pair(u=np.array([0.0, 0.5]), v=0.0),
}


def quad_mixed(x: PyTree) -> jax.Array:
    """sum_i w_i (x_i - t_i)^2 / 2 over all leaves of a mixed-structure dict."""
    terms = jax.tree.map(
        lambda xi, t, w: (
            0.5 * jnp.sum(jnp.asarray(w, xi.dtype) * (xi - jnp.asarray(t, xi.dtype)) ** 2)
        ),
        x,
        _QUAD_TARGET,
        _QUAD_WEIGHT,
    )
    return sum(jax.tree.leaves(terms))


def quad_mixed_np(x: PyTree) -> tuple[float, PyTree]:
    f = 0.0
    flat_x, treedef = jax.tree.flatten(x)
    flat_t = jax.tree.leaves(_QUAD_TARGET)
    flat_w = jax.tree.leaves(_QUAD_WEIGHT)
    grads = []
    for xi, t, w in zip(flat_x, flat_t, flat_w):
        d = np.asarray(xi, np.float64) - np.asarray(t, np.float64)
        f += 0.5 * float(np.sum(np.asarray(w) * d * d))
        grads.append(np.asarray(w) * d)
    grad = jax.tree.unflatten(treedef, grads)
    return f, grad


def quad_mixed_args(x: PyTree, target: PyTree) -> jax.Array:
    """The same weighted quadratic with the target passed through ``args``."""
    terms = jax.tree.map(
        lambda xi, t, w: 0.5 * jnp.sum(jnp.asarray(w, xi.dtype) * (xi - t) ** 2),
        x,
        target,
        _QUAD_WEIGHT,
    )
    return sum(jax.tree.leaves(terms))


# Bounds on quad_mixed: some targets lie outside, so constraints are active at the answer.
_QUAD_LOWER = {
    "s": 0.0,
    "v": np.array([-1.0, -1.0, -1.0]),
    "m": np.array([[0.0, 0.0], [0.0, 0.0]]),
    "nested": {"w": np.array([-0.5, -np.inf])},
    "pair": Pair(u=np.array([-np.inf, 0.0]), v=-1.0),
}
_QUAD_UPPER = {
    "s": 1.0,
    "v": np.array([0.5, 1.0, 1.0]),
    "m": np.array([[1.0, 1.0], [1.0, 1.0]]),
    "nested": {"w": np.array([0.5, 2.5])},
    "pair": Pair(u=np.array([0.5, np.inf]), v=np.inf),
}


# ----------------------------------------------------------------------------------------
# coupled: a dense SPD quadratic across the leaves of a tuple (Newton's flattened Hessian
# couples leaves; GD's gradient too).
# ----------------------------------------------------------------------------------------

_N_COUPLED = 6
_U = np.arange(1.0, _N_COUPLED + 1.0)
_COUPLED_A = np.diag(np.linspace(1.0, 2.0, _N_COUPLED)) + 0.4 * np.outer(_U, _U) / (_U @ _U)
_COUPLED_T = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
_COUPLED_X0 = (np.zeros(2), np.ones((2, 2)))


def _coupled_flat(x):
    return jnp.concatenate([jnp.ravel(x[0]), jnp.ravel(x[1])])


def coupled(x: PyTree) -> jax.Array:
    """(z - t)^T A (z - t) / 2 with z the concatenated leaves of a tuple (vector, matrix)."""
    z = _coupled_flat(x)
    d = z - jnp.asarray(_COUPLED_T, z.dtype)
    return 0.5 * d @ (jnp.asarray(_COUPLED_A, z.dtype) @ d)


def coupled_np(x: PyTree) -> tuple[float, PyTree]:
    z = np.concatenate([np.ravel(x[0]), np.ravel(x[1])]).astype(np.float64)
    d = z - _COUPLED_T
    g = _COUPLED_A @ d
    return 0.5 * float(d @ g), (g[:2], g[2:].reshape(2, 2))


# ----------------------------------------------------------------------------------------
# cosh: non-quadratic, smooth and strongly convex: sum cosh(x - t) - n, minimum 0 at t.
# ----------------------------------------------------------------------------------------

_COSH_T = OrderedDict(b=Pair(u=np.array([0.5, -0.5, 1.0]), v=0.25), a={"deep": np.array(-0.75)})
_COSH_X0 = OrderedDict(b=Pair(u=np.array([1.5, 0.0, 0.0]), v=-0.5), a={"deep": np.array(0.25)})


def cosh_tree(x: PyTree) -> jax.Array:
    terms = jax.tree.map(
        lambda xi, t: jnp.sum(jnp.cosh(xi - jnp.asarray(t, xi.dtype)) - 1.0), x, _COSH_T
    )
    return sum(jax.tree.leaves(terms))


def cosh_tree_np(x: PyTree) -> tuple[float, PyTree]:
    flat_x, treedef = jax.tree.flatten(x)
    flat_t = jax.tree.leaves(_COSH_T)
    f = sum(float(np.sum(np.cosh(np.asarray(xi) - t) - 1.0)) for xi, t in zip(flat_x, flat_t))
    grads = [np.sinh(np.asarray(xi, np.float64) - t) for xi, t in zip(flat_x, flat_t)]
    return f, jax.tree.unflatten(treedef, grads)


# ----------------------------------------------------------------------------------------
# pbdl: the PBDL book's y(x) = [x0, x1^2], L = |y|^2 (the seed document). Degenerate at
# the minimizer (x1^4), so it is used for fixed-length runs, never for convergence.
# ----------------------------------------------------------------------------------------


def pbdl_loss(x: jax.Array) -> jax.Array:
    y = jnp.stack([x[0], x[1] * x[1]])
    return jnp.sum(jnp.square(y))


# ----------------------------------------------------------------------------------------
# The zoo.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """A test problem: objective, start, known answer, NumPy twin, optional bounds."""

    name: str
    fun: Callable[..., jax.Array]
    np_fun: Callable[[PyTree], tuple[float, PyTree]]
    x0_values: PyTree
    xstar_values: PyTree
    fstar: float = 0.0
    lower: PyTree | None = None
    upper: PyTree | None = None

    def x0(self, dtype: Any = jnp.float64) -> PyTree:
        return cast_tree(self.x0_values, dtype)

    def xstar(self, dtype: Any = jnp.float64) -> PyTree:
        return cast_tree(self.xstar_values, dtype)

    def bounds(self, dtype: Any = jnp.float64) -> tuple[PyTree, PyTree]:
        return cast_tree(self.lower, dtype), cast_tree(self.upper, dtype)

    def xstar_bounded(self, dtype: Any = jnp.float64) -> PyTree:
        """The minimizer in the box; clipping is exact for these separable objectives."""
        clipped = jax.tree.map(
            lambda t, lo, hi: np.clip(np.asarray(t, np.float64), lo, hi),
            self.xstar_values,
            self.lower,
            self.upper,
        )
        return cast_tree(clipped, dtype)

    def scipy_minimize(self, **kwargs: Any):
        """Solve the NumPy twin with scipy (L-BFGS-B) on the flattened parameters."""
        import scipy.optimize

        flat0, unravel = ravel_pytree(to_numpy(self.x0_values))

        def fg(z):
            f, g = self.np_fun(jax.tree.map(np.asarray, unravel(z)))
            return f, np.asarray(ravel_pytree(to_numpy(g))[0], np.float64)

        res = scipy.optimize.minimize(
            fg, np.asarray(flat0, np.float64), jac=True, method="L-BFGS-B", **kwargs
        )
        return res, unravel


QUAD_MIXED = Problem(
    "quad_mixed",
    quad_mixed,
    quad_mixed_np,
    _QUAD_X0,
    _QUAD_TARGET,
    lower=_QUAD_LOWER,
    upper=_QUAD_UPPER,
)
COUPLED = Problem(
    "coupled",
    coupled,
    coupled_np,
    _COUPLED_X0,
    (_COUPLED_T[:2], _COUPLED_T[2:].reshape(2, 2)),
)
COSH = Problem("cosh", cosh_tree, cosh_tree_np, _COSH_X0, _COSH_T)

PROBLEMS = {p.name: p for p in (QUAD_MIXED, COUPLED, COSH)}


def mixed_dtypes(path: str) -> Any:
    """Per-leaf dtypes for a mixed-precision x0: float32 under 'v'/'nested', else float64."""
    return jnp.float32 if ("'v'" in path or "'nested'" in path) else jnp.float64


def jaxpr_equations(jaxpr, enclosing: tuple = ()):
    """Every equation of ``jaxpr`` and of its sub-jaxprs (loop bodies and predicates, cond
    branches, nested jits), each with the ``(equation, param name)`` pairs that enclose
    it, outermost first."""
    for eqn in jaxpr.eqns:
        yield eqn, enclosing
        for key, param in eqn.params.items():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from jaxpr_equations(inner, (*enclosing, (eqn, key)))


def primitive_counts(jaxpr) -> collections.Counter:
    """How often each primitive occurs in ``jaxpr``, sub-jaxprs included."""
    return collections.Counter(eqn.primitive.name for eqn, _ in jaxpr_equations(jaxpr))
