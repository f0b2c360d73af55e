"""A zoo for ``jd.least_squares``: nonlinear least-squares test problems with known answers.

Every problem is a residual function ``r(x) -> (m,)`` of a 1-D ``jax.numpy`` array,
written with ``jax.numpy`` only, so it traces, differentiates (``jax.jacfwd``) and runs in
float32 as well as float64 (constants are cast to ``x.dtype``, so it also holds under
``jax.numpy_dtype_promotion("strict")``). Nothing here enables x64.

Sources:

* MGH: J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization
  software", ACM TOMS 7(1) (1981) 17-41. Problem numbers ``[k]`` are theirs; each residual
  is the paper's ``f_i`` written from its definition, x0 is the paper's standard starting
  point. In problem 11 the paper's printed ``|y_i m i x_2|`` is read as ``|y_i - x_2|``
  (as MINPACK-derived codes do), the reading under which f = 0 at (50, 25, 1.5).
* NIST: Statistical Reference Datasets, nonlinear regression,
  https://www.itl.nist.gov/div898/strd/nls/nls_main.shtml. The files in ``data_nist/``
  are the NIST text (see ``data_nist/README.md``); ``read_nist`` parses them, so data,
  starting values, certified parameters and certified residual sum of squares are the
  certified numbers as printed.

``f_min`` is always a plain SUM OF SQUARES, ``sum(r**2)`` (the paper's ``f``, NIST's
"Residual Sum of Squares"): scipy's and our ``cost`` is ``0.5 * sum(r**2)``, so compare
``2 * cost`` with it. For MGH it is the minimum that scipy's ``trf`` and ``lm`` reach from
x0 (scipy 1.17, float64), which is a minimum the paper lists for every problem but [26]
(trigonometric); other minima the paper lists are in ``f_other``, and the comment at each
problem says where the digits come from. For NIST it is the certified residual sum of
squares, and ``certified_params`` are the certified parameters.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

Array = Any


class LsqProblem(NamedTuple):
    """One least-squares problem: minimize ``sum(residuals(x)**2)``.

    Attributes:
      name: readable id (NIST problems: ``"<Dataset>-start1"`` / ``"-start2"``).
      residuals: ``r(x) -> (m,)`` for a 1-D ``jax.numpy`` array ``x`` of length ``n``.
      x0: the starting point, float64 NumPy.
      m, n: residual and variable counts.
      f_min: the SUM OF SQUARES (``2 * cost``) at the minimum reached from x0, or None
        where not known (most bounded variants).
      certified_params: NIST's certified parameters (float64 NumPy), or None.
      bounds: ``(lower, upper)`` float64 NumPy arrays (``-inf``/``inf`` where free), or None.
      source: where the definition and ``f_min`` come from.
      f_other: sums of squares at other minima (the source's), which a solver may reach.
    """

    name: str
    residuals: Callable[[Array], Array]
    x0: np.ndarray
    m: int
    n: int
    f_min: float | None
    certified_params: np.ndarray | None
    bounds: tuple[np.ndarray, np.ndarray] | None
    source: str
    f_other: tuple[float, ...] = ()


def _c(x: Array, values) -> Array:
    """A constant (NumPy float64 data) in ``x``'s dtype."""
    return jnp.asarray(np.asarray(values, np.float64), dtype=x.dtype)


def _i(x: Array, start: int, stop: int) -> Array:
    """``start, ..., stop - 1`` as floats of ``x``'s dtype."""
    return _c(x, np.arange(start, stop))


# ---------------------------------------------------------------------------------------
# Moré, Garbow & Hillstrom (1981).
# ---------------------------------------------------------------------------------------


def rosenbrock(x):  # [1]
    return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def freudenstein_roth(x):  # [2]
    x1, x2 = x[0], x[1]
    return jnp.stack(
        [
            -13.0 + x1 + ((5.0 - x2) * x2 - 2.0) * x2,
            -29.0 + x1 + ((x2 + 1.0) * x2 - 14.0) * x2,
        ]
    )


def powell_badly_scaled(x):  # [3]
    return jnp.stack([1e4 * x[0] * x[1] - 1.0, jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001])


def brown_badly_scaled(x):  # [4]
    return jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


def beale(x):  # [5]
    y = _c(x, [1.5, 2.25, 2.625])
    powers = jnp.stack([x[1], x[1] ** 2, x[1] ** 3])  # x2**i without a float exponent
    return y - x[0] * (1.0 - powers)


def jennrich_sampson(x, m=10):  # [6]
    i = _i(x, 1, m + 1)
    return 2.0 + 2.0 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))


def helical_valley(x):  # [7]
    x1, x2, x3 = x[0], x[1], x[2]
    safe = jnp.where(x1 == 0.0, jnp.ones_like(x1), x1)
    branch = 0.5 * (x1 < 0.0).astype(x.dtype)
    theta = jnp.arctan(x2 / safe) / (2.0 * math.pi) + branch
    theta = jnp.where(x1 == 0.0, 0.25 * jnp.sign(x2), theta)  # the limit as x1 -> 0+
    return jnp.stack([10.0 * (x3 - 10.0 * theta), 10.0 * (jnp.sqrt(x1**2 + x2**2) - 1.0), x3])


_BARD_Y = [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39]
_BARD_Y += [0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39]


def bard(x):  # [8]
    u = _i(x, 1, 16)
    v = 16.0 - u
    w = jnp.minimum(u, v)
    return _c(x, _BARD_Y) - (x[0] + u / (v * x[1] + w * x[2]))


_GAUSSIAN_Y = [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989]
_GAUSSIAN_Y += _GAUSSIAN_Y[-2::-1]  # symmetric about t = 0


def gaussian(x):  # [9]
    t = (8.0 - _i(x, 1, 16)) / 2.0
    return x[0] * jnp.exp(-x[1] * (t - x[2]) ** 2 / 2.0) - _c(x, _GAUSSIAN_Y)


_MEYER_Y = [34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0]
_MEYER_Y += [8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0]


def meyer(x):  # [10]
    t = 45.0 + 5.0 * _i(x, 1, 17)
    return x[0] * jnp.exp(x[1] / (t + x[2])) - _c(x, _MEYER_Y)


def gulf(x, m=10):  # [11], n <= m <= 100
    t_np = np.arange(1, m + 1) / 100.0
    y = _c(x, 25.0 + (-50.0 * np.log(t_np)) ** (2.0 / 3.0))
    return jnp.exp(-(jnp.abs(y - x[1]) ** x[2]) / x[0]) - _c(x, t_np)


def box_3d(x, m=10):  # [12]
    t = 0.1 * _i(x, 1, m + 1)
    return jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (jnp.exp(-t) - jnp.exp(-10.0 * t))


def powell_singular(x):  # [13]; [22] applies it to each group of four
    x1, x2, x3, x4 = x[0], x[1], x[2], x[3]
    return jnp.stack(
        [
            x1 + 10.0 * x2,
            math.sqrt(5.0) * (x3 - x4),
            (x2 - 2.0 * x3) ** 2,
            math.sqrt(10.0) * (x1 - x4) ** 2,
        ]
    )


def wood(x):  # [14]
    x1, x2, x3, x4 = x[0], x[1], x[2], x[3]
    return jnp.stack(
        [
            10.0 * (x2 - x1**2),
            1.0 - x1,
            math.sqrt(90.0) * (x4 - x3**2),
            1.0 - x3,
            math.sqrt(10.0) * (x2 + x4 - 2.0),
            (x2 - x4) / math.sqrt(10.0),
        ]
    )


_KO_Y = [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235]
_KO_Y += [0.0246]
_KO_U = [4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625]


def kowalik_osborne(x):  # [15]
    u = _c(x, _KO_U)
    return _c(x, _KO_Y) - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def brown_dennis(x, m=20):  # [16]
    t = _i(x, 1, m + 1) / 5.0
    a = x[0] + t * x[1] - jnp.exp(t)
    b = x[2] + x[3] * jnp.sin(t) - jnp.cos(t)
    return a**2 + b**2


_OSBORNE1_Y = [0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751]
_OSBORNE1_Y += [0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506]
_OSBORNE1_Y += [0.490, 0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414]
_OSBORNE1_Y += [0.411, 0.406]


def osborne_1(x):  # [17]
    t = 10.0 * _i(x, 0, 33)
    model = x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4])
    return _c(x, _OSBORNE1_Y) - model


def biggs_exp6(x, m=13):  # [18]
    t = 0.1 * _i(x, 1, m + 1)
    y = jnp.exp(-t) - 5.0 * jnp.exp(-10.0 * t) + 3.0 * jnp.exp(-4.0 * t)
    return x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1]) + x[5] * jnp.exp(-t * x[4]) - y


_OSBORNE2_Y = [1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746]
_OSBORNE2_Y += [0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649]
_OSBORNE2_Y += [0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395]
_OSBORNE2_Y += [0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653]
_OSBORNE2_Y += [0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739]
_OSBORNE2_Y += [0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054]


def osborne_2(x):  # [19]
    t = _i(x, 0, 65) / 10.0
    model = (
        x[0] * jnp.exp(-t * x[4])
        + x[1] * jnp.exp(-((t - x[8]) ** 2) * x[5])
        + x[2] * jnp.exp(-((t - x[9]) ** 2) * x[6])
        + x[3] * jnp.exp(-((t - x[10]) ** 2) * x[7])
    )
    return _c(x, _OSBORNE2_Y) - model


def watson(x):  # [20], m = 31, 2 <= n <= 31
    n = x.shape[0]
    t = np.arange(1, 30) / 29.0
    powers = _c(x, t[:, None] ** np.arange(n))  # t_i^(j-1), j = 1..n
    s1 = powers @ x
    s2 = (powers[:, : n - 1] * _i(x, 1, n)) @ x[1:]  # sum (j-1) x_j t_i^(j-2), j = 2..n
    return jnp.concatenate([s2 - s1**2 - 1.0, jnp.stack([x[0], x[1] - x[0] ** 2 - 1.0])])


def extended_rosenbrock(x):  # [21], n even
    odd, even = x[0::2], x[1::2]
    return jnp.stack([10.0 * (even - odd**2), 1.0 - odd], axis=1).ravel()


def extended_powell(x):  # [22], n a multiple of 4
    g = x.reshape(-1, 4).T
    return powell_singular(g).T.ravel()


def penalty_1(x):  # [23], m = n + 1
    return jnp.concatenate([math.sqrt(1e-5) * (x - 1.0), jnp.sum(x**2)[None] - 0.25])


def penalty_2(x):  # [24], m = 2n
    n = x.shape[0]
    sa = math.sqrt(1e-5)
    i = np.arange(2, n + 1)
    y = _c(x, np.exp(i / 10.0) + np.exp((i - 1) / 10.0))
    e = jnp.exp(x / 10.0)
    weights = _i(x, 1, n + 1)[::-1]  # n - j + 1
    return jnp.concatenate(
        [
            x[:1] - 0.2,
            sa * (e[1:] + e[:-1] - y),
            sa * (e[1:] - math.exp(-0.1)),
            jnp.sum(weights * x**2)[None] - 1.0,
        ]
    )


def variably_dimensioned(x):  # [25], m = n + 2
    s = jnp.sum(_i(x, 1, x.shape[0] + 1) * (x - 1.0))
    return jnp.concatenate([x - 1.0, jnp.stack([s, s**2])])


def trigonometric(x):  # [26], m = n
    n = x.shape[0]
    c = jnp.cos(x)
    return n - jnp.sum(c) + _i(x, 1, n + 1) * (1.0 - c) - jnp.sin(x)


def brown_almost_linear(x):  # [27], m = n
    n = x.shape[0]
    return jnp.concatenate([x[:-1] + jnp.sum(x) - (n + 1.0), jnp.prod(x)[None] - 1.0])


def _neighbours(x):
    """(x_{i-1}, x_{i+1}) with x_0 = x_{n+1} = 0."""
    zero = jnp.zeros_like(x[:1])
    return jnp.concatenate([zero, x[:-1]]), jnp.concatenate([x[1:], zero])


def _grid(x):
    """h and t_i = i h, i = 1..n, with h = 1 / (n + 1)."""
    h = 1.0 / (x.shape[0] + 1.0)
    return h, h * _i(x, 1, x.shape[0] + 1)


def discrete_boundary_value(x):  # [28], m = n
    h, t = _grid(x)
    left, right = _neighbours(x)
    return 2.0 * x - left - right + h**2 * (x + t + 1.0) ** 3 / 2.0


def discrete_integral_equation(x):  # [29], m = n
    h, t = _grid(x)
    c = (x + t + 1.0) ** 3
    lower = jnp.cumsum(t * c)  # sum_{j <= i} t_j c_j
    tail = (1.0 - t) * c
    upper = jnp.sum(tail) - jnp.cumsum(tail)  # sum_{j > i} (1 - t_j) c_j
    return x + h * ((1.0 - t) * lower + t * upper) / 2.0


def broyden_tridiagonal(x):  # [30], m = n
    left, right = _neighbours(x)
    return (3.0 - 2.0 * x) * x - left - 2.0 * right + 1.0


def broyden_banded(x, ml=5, mu=1):  # [31], m = n
    n = x.shape[0]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    band = _c(x, (j >= i - ml) & (j <= i + mu) & (j != i))
    return x * (2.0 + 5.0 * x**2) + 1.0 - band @ (x * (1.0 + x))


def linear_full_rank(x, m=10):  # [32], m >= n
    n = x.shape[0]
    s = 2.0 * jnp.sum(x) / m
    return jnp.concatenate([x - s - 1.0, jnp.broadcast_to(-s - 1.0, (m - n,))])


def linear_rank_1(x, m=10):  # [33], m >= n
    s = jnp.sum(_i(x, 1, x.shape[0] + 1) * x)
    return _i(x, 1, m + 1) * s - 1.0


def linear_rank_1_zero(x, m=10):  # [34], m >= n; zero first/last columns and rows
    n = x.shape[0]
    s = jnp.sum(_i(x, 2, n) * x[1:-1])  # sum_{j=2}^{n-1} j x_j
    coef = _c(x, np.concatenate([[0.0], np.arange(1, m - 1), [0.0]]))  # i - 1, rows 2..m-1
    return coef * s - 1.0


def chebyquad(x, m=None):  # [35], m >= n (m = n here)
    m = x.shape[0] if m is None else m
    y = 2.0 * x - 1.0
    previous, current = jnp.ones_like(y), y
    out = []
    for i in range(1, m + 1):
        integral = 0.0 if i % 2 else -1.0 / (i * i - 1.0)  # int_0^1 of shifted T_i
        out.append(jnp.mean(current) - integral)
        previous, current = current, 2.0 * y * current - previous
    return jnp.stack(out)


_MGH = "Moré, Garbow & Hillstrom 1981"


def _mgh(k, name, fun, x0, m, f_min, f_other=()):
    x0 = np.asarray(x0, np.float64)
    source = f"{_MGH}, problem {k}"
    return LsqProblem(name, fun, x0, m, x0.size, f_min, None, None, source, tuple(f_other))


def _arange(a, b):
    return np.arange(a, b, dtype=np.float64)


_N = 10  # size of the variable-dimension problems [21]-[31]
_T = np.arange(1, _N + 1) / (_N + 1.0)  # t_i of [28], [29]

# f_min is the sum of squares at the minimum that scipy's trf and lm (float64) reach from
# x0: the paper's value wherever the paper lists that minimum (all but [26]).
# Digits: "G" = GSL multifit_nlinear's sumsq_exact (agrees with the paper's digits),
# "S" = the paper prints 6 digits, the rest are scipy's (trf and lm, ftol = xtol = gtol =
# 1e-15, agree to 1e-13), "C" = closed form. Zero minima are exact.
MGH_PROBLEMS: list[LsqProblem] = [
    _mgh(1, "rosenbrock", rosenbrock, [-1.2, 1.0], 2, 0.0),
    # Paper: f = 0 at (5, 4), f = 48.9842... at (11.41..., -0.8968...); trf and lm both
    # stop at the local one.
    _mgh(2, "freudenstein_roth", freudenstein_roth, [0.5, -2.0], 2, 48.9842536792400, [0.0]),  # G
    _mgh(3, "powell_badly_scaled", powell_badly_scaled, [0.0, 1.0], 2, 0.0),
    _mgh(4, "brown_badly_scaled", brown_badly_scaled, [1.0, 1.0], 3, 0.0),
    _mgh(5, "beale", beale, [1.0, 1.0], 3, 0.0),
    _mgh(6, "jennrich_sampson", jennrich_sampson, [0.3, 0.4], 10, 1.243621823556148e2),  # G
    _mgh(7, "helical_valley", helical_valley, [-1.0, 0.0, 0.0], 3, 0.0),
    # Paper: also f = 17.4286... at (0.8406..., -inf, -inf) (value G).
    _mgh(8, "bard", bard, [1.0, 1.0, 1.0], 15, 8.214877306578963e-3, [17.42869333333333]),  # G
    _mgh(9, "gaussian", gaussian, [0.4, 1.0, 0.0], 15, 1.12793276961871985e-8),  # G
    _mgh(10, "meyer", meyer, [0.02, 4000.0, 250.0], 16, 8.794585517053883e1),  # G
    # m = 10 (the paper allows 3 <= m <= 100). trf reaches 0 at (50, 25, 1.5); lm does
    # not: it wanders off (x1 -> 0, x3 < 0) and stops at max_nfev with f ~ 5e-5.
    _mgh(11, "gulf", gulf, [5.0, 2.5, 0.15], 10, 0.0),
    _mgh(12, "box_3d", box_3d, [0.0, 10.0, 20.0], 10, 0.0),
    _mgh(13, "powell_singular", powell_singular, [3.0, -1.0, 0.0, 1.0], 4, 0.0),
    _mgh(14, "wood", wood, [-3.0, -1.0, -3.0, -1.0], 6, 0.0),
    # Paper: also f = 1.02734...e-3 at (+inf, -14.07..., -inf, -inf) (value G).
    _mgh(
        15,
        "kowalik_osborne",
        kowalik_osborne,
        [0.25, 0.39, 0.415, 0.39],
        11,
        3.075056038492370e-4,
        [1.02734304869549252e-3],
    ),  # G
    _mgh(16, "brown_dennis", brown_dennis, [25.0, 5.0, -5.0, -1.0], 20, 8.582220162635628e4),  # G
    _mgh(17, "osborne_1", osborne_1, [0.5, 1.5, -1.0, 0.01, 0.02], 33, 5.464894697482687e-5),  # G
    # m = 13: the paper gives f = 5.65565...e-3 and f = 0 at (1, 10, 1, 5, 4, 3); trf and
    # lm reach 0 at (4, 10, 3, 5, 1, 1), the same fit with two exponentials swapped.
    _mgh(18, "biggs_exp6", biggs_exp6, [1.0, 2.0, 1.0, 1.0, 1.0, 1.0], 13, 0.0, [5.65565e-3]),
    _mgh(
        19,
        "osborne_2",
        osborne_2,
        [1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5],
        65,
        4.013773629354e-2,
    ),  # S
    _mgh(20, "watson_6", watson, np.zeros(6), 31, 2.287670053552372e-3),  # G
    _mgh(20, "watson_9", watson, np.zeros(9), 31, 1.399760138089e-6),  # S
    _mgh(21, "extended_rosenbrock", extended_rosenbrock, np.tile([-1.2, 1.0], _N // 2), _N, 0.0),
    _mgh(22, "extended_powell", extended_powell, np.tile([3.0, -1.0, 0.0, 1.0], 3), 12, 0.0),
    _mgh(23, "penalty_1", penalty_1, _arange(1, _N + 1), _N + 1, 7.087651467090e-5),  # S
    _mgh(24, "penalty_2", penalty_2, np.full(_N, 0.5), 2 * _N, 2.936605374567e-4),  # S
    _mgh(
        25, "variably_dimensioned", variably_dimensioned, 1.0 - _arange(1, _N + 1) / _N, _N + 2, 0.0
    ),
    # The paper gives only f = 0. From x0 trf and lm both stop at a local minimum NOT in
    # the paper, 2.795056121879e-5 (scipy's value; x ~ (0.0552, ..., 0.208, 0.164, ...)).
    _mgh(26, "trigonometric", trigonometric, np.full(_N, 1.0 / _N), _N, 2.795056121879e-5, [0.0]),
    # Paper: also f = 1 at (0, ..., 0, n + 1).
    _mgh(27, "brown_almost_linear", brown_almost_linear, np.full(_N, 0.5), _N, 0.0, [1.0]),
    _mgh(28, "discrete_boundary_value", discrete_boundary_value, _T * (_T - 1.0), _N, 0.0),
    _mgh(29, "discrete_integral_equation", discrete_integral_equation, _T * (_T - 1.0), _N, 0.0),
    _mgh(30, "broyden_tridiagonal", broyden_tridiagonal, -np.ones(_N), _N, 0.0),
    _mgh(31, "broyden_banded", broyden_banded, -np.ones(_N), _N, 0.0),
    # n = 5, m = 10; C: m - n, m(m - 1) / (2(2m + 1)), (m^2 + 3m - 6) / (2(2m - 3)).
    _mgh(32, "linear_full_rank", linear_full_rank, np.ones(5), 10, 5.0),
    _mgh(33, "linear_rank_1", linear_rank_1, np.ones(5), 10, 90.0 / 42.0),
    _mgh(34, "linear_rank_1_zero", linear_rank_1_zero, np.ones(5), 10, 124.0 / 34.0),
    _mgh(35, "chebyquad_8", chebyquad, _arange(1, 9) / 9.0, 8, 3.516873725678e-3),  # S
]


# ---------------------------------------------------------------------------------------
# NIST StRD nonlinear regression.
# ---------------------------------------------------------------------------------------

NIST_DIR = pathlib.Path(__file__).parent / "data_nist"


class NistDataset(NamedTuple):
    """One parsed NIST StRD ``.dat`` file (all float64 NumPy)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    x0_start1: np.ndarray
    x0_start2: np.ndarray
    certified_params: np.ndarray
    certified_std: np.ndarray
    certified_rss: float


_PARAM_LINE = re.compile(r"^\s*b(\d+)\s*=\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")
_DATA_HEADER = re.compile(r"^\s*Data:\s+y\s+x\s*$")


def read_nist(name: str) -> NistDataset:
    """Parse ``data_nist/<name>.dat``: the ``b<k> = start1 start2 certified std`` lines,
    the "Residual Sum of Squares" line, and the (y, x) rows after ``Data:  y  x``."""
    lines = (NIST_DIR / f"{name}.dat").read_text().splitlines()
    params, rss, rows, in_data = [], None, [], False
    for line in lines:
        if in_data:
            if line.strip():
                rows.append([float(v) for v in line.split()])
        elif _DATA_HEADER.match(line):
            in_data = True
        elif line.strip().startswith("Residual Sum of Squares:"):
            rss = float(line.split(":")[1])
        elif match := _PARAM_LINE.match(line):
            params.append([float(v) for v in match.groups()])
    params = np.array(sorted(params), np.float64)  # ordered by k
    data = np.array(rows, np.float64)
    if rss is None or not len(params) or data.ndim != 2 or data.shape[1] != 2:
        raise ValueError(f"{name}.dat: could not parse")
    assert np.array_equal(params[:, 0], np.arange(1, len(params) + 1)), name
    return NistDataset(
        name, data[:, 1], data[:, 0], params[:, 1], params[:, 2], params[:, 3], params[:, 4], rss
    )


# Model formulas, as printed in each file ("Model:" block), of x and b = (b1, ..., bp).
NIST_MODELS: dict[str, Callable[[Array, Array], Array]] = {
    "Misra1a": lambda x, b: b[0] * (1.0 - jnp.exp(-b[1] * x)),
    "Chwirut2": lambda x, b: jnp.exp(-b[0] * x) / (b[1] + b[2] * x),
    "DanWood": lambda x, b: b[0] * x ** b[1],
    "Misra1b": lambda x, b: b[0] * (1.0 - (1.0 + b[1] * x / 2.0) ** (-2)),
    "MGH09": lambda x, b: b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3]),
    "MGH10": lambda x, b: b[0] * jnp.exp(b[1] / (x + b[2])),
    "Thurber": lambda x, b: (
        (b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3) / (1.0 + b[4] * x + b[5] * x**2 + b[6] * x**3)
    ),
    "Eckerle4": lambda x, b: (b[0] / b[1]) * jnp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2),
    "Rat42": lambda x, b: b[0] / (1.0 + jnp.exp(b[1] - b[2] * x)),
    "Roszman1": lambda x, b: b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / math.pi,
}

NIST_DATA: dict[str, NistDataset] = {name: read_nist(name) for name in NIST_MODELS}


def nist_residuals(name: str) -> Callable[[Array], Array]:
    """``r(b) = y - model(x, b)`` for the NIST dataset ``name``."""
    data, model = NIST_DATA[name], NIST_MODELS[name]

    def residuals(b):
        return _c(b, data.y) - model(_c(b, data.x), b)

    residuals.__name__ = residuals.__qualname__ = f"nist_{name}"
    return residuals


def _nist(name: str, start: int) -> LsqProblem:
    data = NIST_DATA[name]
    x0 = data.x0_start1 if start == 1 else data.x0_start2
    return LsqProblem(
        f"{name}-start{start}",
        nist_residuals(name),
        x0.copy(),
        data.y.size,
        x0.size,
        data.certified_rss,
        data.certified_params.copy(),
        None,
        f"NIST StRD {name}.dat, Start {start}; f_min is the certified residual sum of squares",
    )


NIST_PROBLEMS: list[LsqProblem] = [_nist(name, s) for name in NIST_MODELS for s in (1, 2)]


# ---------------------------------------------------------------------------------------
# Box-bounded variants: the unconstrained minimizer lies outside the box, x0 strictly
# inside, and bounds are active at scipy's solution. f_min is set only where it has a
# closed form; otherwise None (compare with scipy's trf). The comments give scipy's trf
# result (float64, ftol = xtol = gtol = 1e-15) as 2 * cost, and the active bounds.
# ---------------------------------------------------------------------------------------

_INF = np.inf


def _boxed(base: LsqProblem, name, lower, upper, f_min=None):
    lower = np.broadcast_to(np.asarray(lower, np.float64), base.x0.shape).copy()
    upper = np.broadcast_to(np.asarray(upper, np.float64), base.x0.shape).copy()
    assert np.all(lower < base.x0) and np.all(base.x0 < upper), name
    source = base.source.split(";")[0] + ", with box bounds"
    return base._replace(
        name=name,
        bounds=(lower, upper),
        f_min=f_min,
        certified_params=None,
        source=source,
        f_other=(),
    )


MGH_BY_NAME = {p.name: p for p in MGH_PROBLEMS}
NIST_BY_NAME = {p.name: p for p in NIST_PROBLEMS}

BOUNDED_PROBLEMS: list[LsqProblem] = [
    # x1 <= 0.5: the minimum is (0.5, 0.25) with f = (1 - 0.5)^2.
    _boxed(MGH_BY_NAME["rosenbrock"], "rosenbrock_box", [-_INF, -_INF], [0.5, _INF], 0.25),
    # 7.27000507e-2 at (2.5, 0.35006): x1 upper.
    _boxed(MGH_BY_NAME["beale"], "beale_box", [-1.0, 0.1], [2.5, 3.0]),
    # 14.2882339 at (0.5, 0.42455, 1.0): x1 upper, x3 upper.
    _boxed(
        MGH_BY_NAME["helical_valley"], "helical_valley_box", [-_INF, -1.0, -1.0], [0.5, 1.0, 1.0]
    ),
    # 1.87819630e-4 at (0.1, -0.00998, 0.04307, 0.04378): x1 lower.
    _boxed(MGH_BY_NAME["powell_singular"], "powell_singular_box", [0.1, -_INF, -_INF, -_INF], _INF),
    # 7.97239503 at (-0.94324, 0.9, -0.94263, 0.9): x2, x4 upper.
    _boxed(MGH_BY_NAME["wood"], "wood_box", -_INF, 0.9),
    # Every x_{2i-1} <= 0.5: n / 2 copies of rosenbrock_box.
    _boxed(
        MGH_BY_NAME["extended_rosenbrock"],
        "extended_rosenbrock_box",
        -_INF,
        np.tile([0.5, _INF], _N // 2),
        _N // 2 * 0.25,
    ),
    # 281.440656 at (~1e-21, 0.35): both lower.
    _boxed(MGH_BY_NAME["jennrich_sampson"], "jennrich_sampson_box", [0.0, 0.35], [1.0, 1.0]),
    # All x_i = 0.5 (lower): f = 10 * 1e-5 * 0.25 + (10 * 0.25 - 0.25)^2.
    _boxed(MGH_BY_NAME["penalty_1"], "penalty_1_box", 0.5, _INF, 2.5e-5 + 2.25**2),
    # 0.303540808 at (250.815, 5.2e-4): b2 upper (certified b2 = 5.50e-4).
    _boxed(NIST_BY_NAME["Misra1a-start2"], "Misra1a_box", [200.0, 1e-4], [300.0, 5.2e-4]),
]

ALL_PROBLEMS: list[LsqProblem] = MGH_PROBLEMS + NIST_PROBLEMS + BOUNDED_PROBLEMS
BY_NAME: dict[str, LsqProblem] = {p.name: p for p in ALL_PROBLEMS}

__all__ = [
    "ALL_PROBLEMS",
    "BOUNDED_PROBLEMS",
    "BY_NAME",
    "MGH_PROBLEMS",
    "NIST_DATA",
    "NIST_DIR",
    "NIST_MODELS",
    "NIST_PROBLEMS",
    "LsqProblem",
    "NistDataset",
    "nist_residuals",
    "read_nist",
]
