"""A zoo for L-BFGS(-B): Moré, Garbow & Hillstrom (1981) test problems and bounded ones.

Each objective is written once, from the problem's definition, against an array namespace
``xp`` and a trailing variable axis (``v[..., i]``), so the same formula runs as JAX
(``fun``, over a dict x0 of mixed-shape leaves, for us) and as NumPy (``fun_np``, over the
flat vector, for scipy). scipy's gradient is NumPy too: complex-step differentiation of
``fun_np`` (Squire & Trapp 1998), exact to rounding; no formula uses abs/max, so every
one is complex-analytic where it is evaluated.

``fun`` is built once at import, so ``minimize`` (which caches compiled solves by the
identity of ``fun``) compiles each problem once per test session.

References: J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained
optimization software", ACM TOMS 7 (1981) 17-41 (problem numbers below are theirs).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """One test problem.

    Attributes:
      name: readable id.
      fun: the JAX objective of the dict x (leaves in ``shapes``).
      fun_np: the NumPy objective of the flat vector (same formula).
      x0: the starting point, a dict of float64 NumPy leaves.
      shapes: leaf name -> shape; the flat vector is the leaves in sorted-key order.
      bounds: ``(lower, upper)`` dicts like x0 (``-inf``/``inf`` where absent), or None.
      f_star: the optimal value where the literature (or the construction) gives it.
      x_star: the minimizer (flat) where it is known and unique.
    """

    name: str
    fun: Callable[[dict], Any]
    fun_np: Callable[[np.ndarray], Any]
    x0: dict
    shapes: dict
    bounds: tuple[dict, dict] | None = None
    f_star: float | None = None
    x_star: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(sum(np.prod(s, dtype=int) for s in self.shapes.values()))

    def flatten(self, x: dict) -> np.ndarray:
        return np.concatenate([np.ravel(np.asarray(x[k])) for k in sorted(self.shapes)])

    def unflatten(self, v: np.ndarray) -> dict:
        out, i = {}, 0
        for k in sorted(self.shapes):
            size = int(np.prod(self.shapes[k], dtype=int))
            out[k] = np.asarray(v[i : i + size], np.float64).reshape(self.shapes[k])
            i += size
        return out

    def grad_np(self, v: np.ndarray) -> np.ndarray:
        """Complex-step gradient of ``fun_np``: Im f(v + i h e_j) / h, all j at once."""
        h = 1e-30
        return np.imag(self.fun_np(v[None, :] + 1j * h * np.eye(v.size))) / h

    def value_and_grad_np(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        return float(self.fun_np(v)), self.grad_np(v)

    def flat_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.bounds is None:
            return None
        return self.flatten(self.bounds[0]), self.flatten(self.bounds[1])

    def scipy_solve(self):
        """The reference: ``scipy.optimize.minimize(method="L-BFGS-B")`` with its defaults
        on the flat problem (exact complex-step gradients)."""
        import scipy.optimize as so  # a test/benchmark dependency, not the package's

        bounds = self.flat_bounds()
        return so.minimize(
            self.value_and_grad_np,
            self.flatten(self.x0),
            jac=True,
            method="L-BFGS-B",
            bounds=None if bounds is None else so.Bounds(*bounds),
        )


def _flat_jax(x: dict) -> Array:
    return jnp.concatenate([jnp.ravel(x[k]) for k in sorted(x)])


def make(
    name: str,
    formula: Callable[[Array, Any], Array],
    x0: Any,
    shapes: dict,
    bounds: tuple[Any, Any] | None = None,
    f_star: float | None = None,
    x_star: Any = None,
) -> Problem:
    """A ``Problem`` from ``formula(v, xp)`` over the flat vector ``v`` (trailing axis)."""
    proto = Problem(name, None, None, {}, shapes)  # only for (un)flattening

    def fun(x):
        return formula(_flat_jax(x), jnp)

    fun.__name__ = fun.__qualname__ = name

    def fun_np(v):
        return formula(np.asarray(v), np)

    x0 = proto.unflatten(np.asarray(x0, np.float64))
    if bounds is not None:
        n = proto.n
        bounds = tuple(
            proto.unflatten(np.broadcast_to(np.asarray(b, np.float64), (n,))) for b in bounds
        )
    x_star = None if x_star is None else np.asarray(x_star, np.float64)
    return Problem(name, fun, fun_np, x0, shapes, bounds, f_star, x_star)


def _sq(r: Array, xp) -> Array:
    return xp.sum(r * r, axis=-1)


def _col(v: Array, i: int) -> Array:
    return v[..., i]


# ---------------------------------------------------------------------------------------
# Unconstrained (MGH numbers in brackets).
# ---------------------------------------------------------------------------------------


def rosenbrock(v, xp):  # [1], extended [21]: pairs (x_{2i-1}, x_{2i})
    odd, even = v[..., 0::2], v[..., 1::2]
    return xp.sum(100.0 * (even - odd**2) ** 2 + (1.0 - odd) ** 2, axis=-1)


def freudenstein_roth(v, xp):  # [2]
    x1, x2 = _col(v, 0), _col(v, 1)
    r1 = -13.0 + x1 + ((5.0 - x2) * x2 - 2.0) * x2
    r2 = -29.0 + x1 + ((x2 + 1.0) * x2 - 14.0) * x2
    return r1**2 + r2**2


def brown_badly_scaled(v, xp):  # [4]
    x1, x2 = _col(v, 0), _col(v, 1)
    return (x1 - 1e6) ** 2 + (x2 - 2e-6) ** 2 + (x1 * x2 - 2.0) ** 2


def beale(v, xp):  # [5]
    x1, x2 = _col(v, 0), _col(v, 1)
    y = (1.5, 2.25, 2.625)
    return sum((y[i] - x1 * (1.0 - x2 ** (i + 1))) ** 2 for i in range(3))


def jennrich_sampson(v, xp):  # [6], m = 10
    i = xp.arange(1.0, 11.0)
    x1, x2 = v[..., 0:1], v[..., 1:2]
    return _sq(2.0 + 2.0 * i - (xp.exp(i * x1) + xp.exp(i * x2)), xp)


def helical_valley(v, xp):  # [7]
    x1, x2, x3 = _col(v, 0), _col(v, 1), _col(v, 2)
    theta = xp.arctan(x2 / x1) / (2.0 * np.pi) + xp.where(xp.real(x1) < 0, 0.5, 0.0)
    r1 = 10.0 * (x3 - 10.0 * theta)
    r2 = 10.0 * (xp.sqrt(x1**2 + x2**2) - 1.0)
    return r1**2 + r2**2 + x3**2


_BARD_Y = np.array(
    [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39]
)


def bard(v, xp):  # [8]
    u = np.arange(1.0, 16.0)
    w = np.minimum(u, 16.0 - u)
    x1, x2, x3 = v[..., 0:1], v[..., 1:2], v[..., 2:3]
    return _sq(_BARD_Y - (x1 + u / ((16.0 - u) * x2 + w * x3)), xp)


_GAUSS_Y = np.array(
    [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989]
    + [0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009]
)


def gaussian(v, xp):  # [9]
    t = (8.0 - np.arange(1.0, 16.0)) / 2.0
    x1, x2, x3 = v[..., 0:1], v[..., 1:2], v[..., 2:3]
    return _sq(x1 * xp.exp(-x2 * (t - x3) ** 2 / 2.0) - _GAUSS_Y, xp)


def box_3d(v, xp):  # [12], m = 10
    t = 0.1 * np.arange(1.0, 11.0)
    x1, x2, x3 = v[..., 0:1], v[..., 1:2], v[..., 2:3]
    return _sq(xp.exp(-t * x1) - xp.exp(-t * x2) - x3 * (np.exp(-t) - np.exp(-10.0 * t)), xp)


def powell_singular(v, xp):  # [13], extended [22]: groups of four
    x1, x2, x3, x4 = v[..., 0::4], v[..., 1::4], v[..., 2::4], v[..., 3::4]
    terms = (x1 + 10.0 * x2) ** 2 + 5.0 * (x3 - x4) ** 2 + (x2 - 2.0 * x3) ** 4
    return xp.sum(terms + 10.0 * (x1 - x4) ** 4, axis=-1)


def wood(v, xp):  # [14]
    x1, x2, x3, x4 = (_col(v, i) for i in range(4))
    return (
        100.0 * (x2 - x1**2) ** 2
        + (1.0 - x1) ** 2
        + 90.0 * (x4 - x3**2) ** 2
        + (1.0 - x3) ** 2
        + 10.1 * ((x2 - 1.0) ** 2 + (x4 - 1.0) ** 2)
        + 19.8 * (x2 - 1.0) * (x4 - 1.0)
    )


_KO_Y = np.array(
    [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246]
)
_KO_U = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625])


def kowalik_osborne(v, xp):  # [15]
    x1, x2, x3, x4 = (v[..., i : i + 1] for i in range(4))
    u = _KO_U
    return _sq(_KO_Y - x1 * (u**2 + u * x2) / (u**2 + u * x3 + x4), xp)


def brown_dennis(v, xp):  # [16], m = 20
    t = np.arange(1.0, 21.0) / 5.0
    x1, x2, x3, x4 = (v[..., i : i + 1] for i in range(4))
    r = (x1 + t * x2 - np.exp(t)) ** 2 + (x3 + x4 * np.sin(t) - np.cos(t)) ** 2
    return _sq(r, xp)


def penalty_1(v, xp):  # [23]
    a = 1e-5
    return a * xp.sum((v - 1.0) ** 2, axis=-1) + (xp.sum(v**2, axis=-1) - 0.25) ** 2


def variably_dimensioned(v, xp):  # [25]
    j = np.arange(1.0, v.shape[-1] + 1.0)
    s = xp.sum(j * (v - 1.0), axis=-1)
    return xp.sum((v - 1.0) ** 2, axis=-1) + s**2 + s**4


def trigonometric(v, xp):  # [26]
    n = v.shape[-1]
    i = np.arange(1.0, n + 1.0)
    c = xp.cos(v)
    r = n - xp.sum(c, axis=-1, keepdims=True) + i * (1.0 - c) - xp.sin(v)
    return _sq(r, xp)


def _shift_pad(v, xp, k):
    """x_{i+k} with zeros past either end (x_0 = x_{n+1} = 0)."""
    zeros = xp.zeros_like(v[..., :1])
    if k > 0:
        return xp.concatenate([v[..., k:], zeros], axis=-1)
    return xp.concatenate([zeros, v[..., :k]], axis=-1)


def discrete_boundary_value(v, xp):  # [28]
    n = v.shape[-1]
    h = 1.0 / (n + 1.0)
    t = h * np.arange(1.0, n + 1.0)
    r = 2.0 * v - _shift_pad(v, xp, -1) - _shift_pad(v, xp, 1) + h**2 * (v + t + 1.0) ** 3 / 2.0
    return _sq(r, xp)


def broyden_tridiagonal(v, xp):  # [30]
    r = (3.0 - 2.0 * v) * v - _shift_pad(v, xp, -1) - 2.0 * _shift_pad(v, xp, 1) + 1.0
    return _sq(r, xp)


def _band(n: int, lower: int = 5, upper: int = 1) -> np.ndarray:
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return ((j >= i - lower) & (j <= i + upper) & (j != i)).astype(np.float64)


def broyden_banded(v, xp):  # [31], ml = 5, mu = 1
    band = _band(v.shape[-1])
    r = v * (2.0 + 5.0 * v**2) + 1.0 - (v * (1.0 + v)) @ band.T
    return _sq(r, xp)


def chebyquad(v, xp):  # [35], m = n
    n = v.shape[-1]
    y = 2.0 * v - 1.0
    t_prev, t = xp.ones_like(y), y
    residuals = []
    for i in range(1, n + 1):
        integral = 0.0 if i % 2 else -1.0 / (i * i - 1.0)
        residuals.append(xp.mean(t, axis=-1) - integral)
        t_prev, t = t, 2.0 * y * t - t_prev
    return sum(r * r for r in residuals)


def _rosen_x0(n):
    return np.tile([-1.2, 1.0], n // 2)


# One dict structure per dimension (mixed shapes, scalars included): problems that share
# one also share a compiled solve in the tests (see ``dispatcher``).
SHAPES = {
    2: {"head": (), "tail": (1,)},
    3: {"xy": (2,), "z": ()},
    4: {"head": (1,), "tail": (3,)},
    10: {"head": (2,), "tail": (2, 4)},
    12: {"head": (4,), "tail": (2, 4)},
    100: {"head": (10, 5), "tail": (50,)},
}


UNCONSTRAINED = [
    make("rosenbrock_2", rosenbrock, [-1.2, 1.0], SHAPES[2], f_star=0.0),
    make("rosenbrock_10", rosenbrock, _rosen_x0(10), SHAPES[10], f_star=0.0),
    make("rosenbrock_100", rosenbrock, _rosen_x0(100), SHAPES[100], f_star=0.0),
    make("freudenstein_roth", freudenstein_roth, [0.5, -2.0], SHAPES[2], f_star=None),
    make("brown_badly_scaled", brown_badly_scaled, [1.0, 1.0], SHAPES[2], f_star=0.0),
    make("beale", beale, [1.0, 1.0], SHAPES[2], f_star=0.0),
    make("jennrich_sampson", jennrich_sampson, [0.3, 0.4], SHAPES[2], f_star=124.362182355),
    make("helical_valley", helical_valley, [-1.0, 0.0, 0.0], SHAPES[3], f_star=0.0),
    make("bard", bard, [1.0, 1.0, 1.0], SHAPES[3], f_star=8.21487730e-3),
    make("gaussian", gaussian, [0.4, 1.0, 0.0], SHAPES[3], f_star=1.12793277e-8),
    make("box_3d", box_3d, [0.0, 10.0, 20.0], SHAPES[3], f_star=0.0),
    make("powell_singular", powell_singular, [3.0, -1.0, 0.0, 1.0], SHAPES[4], f_star=0.0),
    make("wood", wood, [-3.0, -1.0, -3.0, -1.0], SHAPES[4], f_star=0.0),
    make(
        "kowalik_osborne",
        kowalik_osborne,
        [0.25, 0.39, 0.415, 0.39],
        SHAPES[4],
        f_star=3.07505e-4,
    ),
    make("brown_dennis", brown_dennis, [25.0, 5.0, -5.0, -1.0], SHAPES[4], f_star=85822.2016),
    make(
        "extended_powell",
        powell_singular,
        np.tile([3.0, -1.0, 0.0, 1.0], 3),
        SHAPES[12],
        f_star=0.0,
    ),
    make("penalty_1", penalty_1, np.arange(1.0, 11.0), SHAPES[10], f_star=7.08765e-5),
    make(
        "variably_dimensioned",
        variably_dimensioned,
        1.0 - np.arange(1.0, 11.0) / 10.0,
        SHAPES[10],
        f_star=0.0,
    ),
    make("trigonometric", trigonometric, np.full(10, 0.1), SHAPES[10], f_star=None),
    make(
        "discrete_boundary_value",
        discrete_boundary_value,
        np.arange(1.0, 11.0) / 11.0 * (np.arange(1.0, 11.0) / 11.0 - 1.0),
        SHAPES[10],
        f_star=0.0,
    ),
    make(
        "broyden_tridiagonal",
        broyden_tridiagonal,
        -np.ones(10),
        SHAPES[10],
        f_star=0.0,
    ),
    make("broyden_banded", broyden_banded, -np.ones(10), SHAPES[10], f_star=0.0),
    make("chebyquad", chebyquad, np.arange(1.0, 11.0) / 11.0, SHAPES[10], f_star=6.50395e-3),
]

# ---------------------------------------------------------------------------------------
# Bounded.
# ---------------------------------------------------------------------------------------

# A strictly convex quadratic on [0, 1]^12 whose minimizer is built from its KKT
# conditions: x* has coordinates on the lower bound, on the upper bound and inside, and
# b = A x* - lam with multipliers lam > 0 (lower), < 0 (upper), 0 (inside), so the
# active set is known exactly and strictly complementary.
_QN = 10
_QA = 4.0 * np.eye(_QN) - np.eye(_QN, k=1) - np.eye(_QN, k=-1)
_Q_XSTAR = np.array([0.0, 1.0, 0.3, 0.0, 0.7, 1.0, 0.5, 0.0, 0.2, 0.9])
_Q_LAM = np.array([2.0, -1.5, 0.0, 0.5, 0.0, -3.0, 0.0, 4.0, 0.0, 0.0])
_QB = _QA @ _Q_XSTAR - _Q_LAM


def quadratic_box(v, xp):
    return 0.5 * xp.sum(v * (v @ _QA), axis=-1) - v @ _QB


# Separable, every kind of bound: free, lower only, upper only, both, and fixed (l = u).
# Leaves in sorted order: both (3,), fixed (), free (2,), lower (3,), upper (2, 2).
_OB_C = np.array([-2.0, 0.5, 3.0, 0.7, 1.0, -2.0, -1.0, 0.0, 5.0, 0.0, 3.0, -1.0, 4.0])
_OB_W = np.array([1.0, 2.0, 0.5, 1.0, 1.5, 1.0, 3.0, 0.5, 1.0, 2.0, 1.0, 1.0, 0.25])
_OB_LOWER = np.array([-1.0, -1.0, -1.0, 0.4, -np.inf, -np.inf, 0.0, 0.0, 0.0] + [-np.inf] * 4)
_OB_UPPER = np.array([1.0, 1.0, 1.0, 0.4, np.inf, np.inf] + [np.inf] * 3 + [1.0, 1.0, 2.0, 2.0])


def outside_box(v, xp):
    return xp.sum(_OB_W * (v - _OB_C) ** 2, axis=-1)


# Non-negative least squares; the solution (exact active set) comes from scipy.optimize.nnls.
_RNG = np.random.default_rng(20240607)
_NN_A = _RNG.normal(size=(20, 10))
_NN_B = _NN_A @ np.array([1.0, -2.0, 0.5, 0.0, -1.0, 2.0, -0.5, 1.5, -0.2, 0.7])
_NN_B = _NN_B + 0.1 * _RNG.normal(size=20)


def nnls(v, xp):
    r = v @ _NN_A.T - _NN_B
    return 0.5 * xp.sum(r * r, axis=-1)


# L2-regularized logistic regression with weights in [-1, 1]; the data are nearly
# separable along a heavy direction, so several weights end on a bound. The bias
# (leaf "b") is unbounded.
_LG_X = _RNG.normal(size=(40, 5))
_LG_Y = np.sign(_LG_X @ np.array([4.0, -3.0, 0.5, 2.5, 0.0]) + 0.3 * _RNG.normal(size=40))


def logistic_box(v, xp):
    b, w = v[..., :1], v[..., 1:]
    margin = _LG_Y * (w @ _LG_X.T + b)
    return xp.mean(xp.log(1.0 + xp.exp(-margin)), axis=-1) + 1e-3 * xp.sum(w * w, axis=-1)


_RB_UPPER = np.tile([0.5, np.inf], 5)

BOUNDED = [
    make(
        "quadratic_box",
        quadratic_box,
        np.full(_QN, 0.5),
        SHAPES[10],
        bounds=(0.0, 1.0),
        f_star=float(0.5 * _Q_XSTAR @ _QA @ _Q_XSTAR - _QB @ _Q_XSTAR),
        x_star=_Q_XSTAR,
    ),
    make(
        "outside_box",
        outside_box,
        np.zeros(13),
        {"both": (3,), "fixed": (), "free": (2,), "lower": (3,), "upper": (2, 2)},
        bounds=(_OB_LOWER, _OB_UPPER),
        x_star=np.clip(_OB_C, _OB_LOWER, _OB_UPPER),
    ),
    make("nnls", nnls, np.ones(10), SHAPES[10], bounds=(0.0, np.inf)),
    make(
        "logistic_box",
        logistic_box,
        np.zeros(6),
        {"b": (), "w": (5,)},
        bounds=(np.r_[-np.inf, -np.ones(5)], np.r_[np.inf, np.ones(5)]),
    ),
    make(
        "rosenbrock_box",
        rosenbrock,
        _rosen_x0(10),
        SHAPES[10],
        bounds=(-np.inf, _RB_UPPER),
        f_star=1.25,
        x_star=np.tile([0.5, 0.25], 5),
    ),
    make(
        "box_3d_box",  # x0 = (0, 10, 20) lies outside: projected first
        box_3d,
        [0.0, 10.0, 20.0],
        SHAPES[3],
        bounds=(0.0, 12.0),
        f_star=0.0,
    ),
    make(
        "beale_box",  # the minimizer (3, 0.5) lies outside
        beale,
        [1.0, 1.0],
        SHAPES[2],
        bounds=([-np.inf, -np.inf], [2.5, np.inf]),
    ),
    make(
        "trigonometric_box",
        trigonometric,
        np.full(10, 0.1),
        SHAPES[10],
        bounds=(0.05, 0.15),
    ),
]

ALL = UNCONSTRAINED + BOUNDED
BY_NAME = {p.name: p for p in ALL}


def _structure(p: Problem) -> tuple:
    return (p.bounds is not None, tuple(sorted(p.shapes.items())))


# Evaluations outside the box, by problem name.
OUTSIDE_THE_BOX: collections.Counter = collections.Counter()


def _count_outside(names: list[str], index, inside) -> None:
    if not bool(inside):
        OUTSIDE_THE_BOX[names[int(index)]] += 1


def _dispatcher(group: list[Problem]) -> Callable:
    funs = [p.fun for p in group]
    count_outside = functools.partial(_count_outside, [p.name for p in group])

    def fun(x, index, lower=None, upper=None):
        value = jax.lax.switch(index, funs, x)
        if lower is None:
            return value
        # NaN anywhere outside the box (a line search would back away from it), and each
        # such evaluation counted on the host: ``OUTSIDE_THE_BOX`` must stay empty.
        inside = [jnp.all((x[k] >= lower[k]) & (x[k] <= upper[k])) for k in sorted(x)]
        inside = jnp.all(jnp.stack(inside))
        jax.debug.callback(count_outside, index, inside)
        return jnp.where(inside, value, jnp.nan)

    fun.__name__ = fun.__qualname__ = "dispatch_" + "_".join(p.name for p in group)
    return fun


_GROUPS: dict[tuple, list[Problem]] = {}
for _p in ALL:
    _GROUPS.setdefault(_structure(_p), []).append(_p)
_DISPATCH = {key: _dispatcher(group) for key, group in _GROUPS.items()}


def dispatcher(p: Problem) -> tuple[Callable, tuple]:
    """``(fun, args)`` with ``fun(x, *args) == p.fun(x)`` inside p's box (NaN outside it),
    where ``fun`` is shared by all problems with p's x0 structure (and boundedness): one
    compiled solve serves them all, and only p's branch of the ``lax.switch`` runs."""
    group = _GROUPS[_structure(p)]
    args = (np.int32(group.index(p)),)
    if p.bounds is not None:
        args += p.bounds
    return _DISPATCH[_structure(p)], args
