"""The Moré–Thuente strong-Wolfe line search of MINPACK-2 (scipy's ``dcsrch``) as a state
machine, for L-BFGS(-B).

Moré & Thuente (1994), "Line search algorithms with guaranteed sufficient decrease",
ACM TOMS 20(3). The search keeps an interval [stx, sty] known to contain a step that
satisfies both Wolfe conditions and picks each new trial by safeguarded cubic/quadratic
interpolation (``_dcstep``); each trip of the driver's loop feeds one (f, f') pair in
(``more_thuente_advance``), and the search never evaluates ``fun`` itself. The caller
keeps its trial steps at or below the largest feasible one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_dict._tree import safe_divide, safe_sqrt

XTRAPL = 1.1  # lower extrapolation factor while the minimizer is not bracketed
XTRAPU = 4.0  # upper extrapolation factor


class WolfeTask:
    """What ``more_thuente_advance`` says about the step just evaluated (dcsrch's task)."""

    CONTINUE = 0  # evaluate ``search.stp`` next
    CONVERGED = 1  # both strong-Wolfe conditions hold at the evaluated step
    WARN_ROUNDING = 2  # the bracket cannot shrink further (or the new step was not finite)
    WARN_XTOL = 3  # the bracket is below xtol relative width
    WARN_STPMAX = 4  # the step hit stpmax with sufficient decrease and negative slope
    WARN_STPMIN = 5  # the step hit stpmin without sufficient decrease


_VALUES = (
    "raw", "stpmax", "finit", "ginit", "gtest", "stx", "fx", "gx", "sty", "fy", "gy",
    "width", "width1",
)  # fmt: skip
_FLAGS = ("bracketed", "stage2")


class _Field:
    """One field of ``MoreThuente``, read from its stack."""

    def __init__(self, stack: str, name: str):
        self.stack = stack
        self.index = (_VALUES if stack == "values" else _FLAGS).index(name)

    def __get__(self, state: Any, owner: Any = None) -> Any:
        return self if state is None else getattr(state, self.stack)[self.index]


class MoreThuente(NamedTuple):
    """State of one Moré–Thuente search along a ray: scalars, stacked or one array each.

    ``stx`` is the best step so far and ``sty`` the other end of the bracket (with their
    f and f' values); ``width``/``width1`` drive the forced bisection; ``stage2`` turns off
    the modified function psi. ``raw`` is the step the interpolation proposed; the step
    actually tried, ``more_thuente_step(search)``, is it safeguarded (dcsrch stores both
    and the interval ``[stmin, stmax]``; here they are derived, which keeps the compiled
    search small).

    The fields are read as attributes (``search.stx``) and set with ``MoreThuente.of``
    and ``replaced``. Stacked, the 13 values are one array and the two flags another
    (the caller's choice, kept by every state made from this one): XLA gives each
    output of a loop body or of a conditional a buffer of its own, and as 15 scalars the
    search costs a copy kernel each where it crosses one (the loop's carry, the cond that
    skips the interpolation). The two-loop stepper stacks it in a single solve: 2-D and
    10-D L-BFGS trips 67 -> 54 and 69 -> 56 kernels, 0.87-0.93x the time.

    Not in a solve traced for ``vmap`` or the queue (``traced_as_batch``), where a
    (problems, 13) array made 1,000 2-D Rosenbrocks 1.2x slower (its columns computed
    apart, then joined; a solve JAX batches after tracing it alone, ``_programs``'
    replay, stays stacked). Nor with bounds where the Cauchy point has its window (more
    than ``2 * cauchy.WINDOW`` variables, ``cauchy.has_window``): boxed solves of n = 100
    took 1.14-1.24x the time on 2 cores in three of four runs (XLA:CPU runs their larger
    kernels concurrently, and the joined state changed the schedule; on one core they ran
    alike, 0.99x, as with the window off). Smaller boxed solves stack it: trips 85 -> 71
    kernels at n <= 30 (91 -> 77 at 50-64), 0.94x (n = 10) and 0.98x (n = 30) the time on
    one core; on two, 0.86-1.27x from one compile to the next at n = 2 to 64. The compact
    form without bounds (n > ``TWO_LOOP_MAX_N``) stacks it, and so can start its next
    search in a cond: trips 118 -> 88 kernels, 0.88-0.97x the time at n = 300 to 10,000.
    Both steppers take the rule from ``search.stacks_search``.
    """

    values: Any  # ``_VALUES``' fields in order: one array, or a tuple of them per field
    flags: Any  # ``_FLAGS``' fields, the same way

    @classmethod
    def of(cls, stacked: bool, **fields: jax.Array) -> MoreThuente:
        """The state with these fields (each of ``_VALUES`` and ``_FLAGS``), stacked or
        one array per field."""
        values = tuple(jnp.asarray(fields[name]) for name in _VALUES)
        flags = tuple(jnp.asarray(fields[name], bool) for name in _FLAGS)
        return cls(jnp.stack(values), jnp.stack(flags)) if stacked else cls(values, flags)

    @property
    def stacked(self) -> bool:
        return not isinstance(self.values, tuple)

    def replaced(self, **fields: jax.Array) -> MoreThuente:
        """This state with some fields changed (each keeps its dtype), in its layout."""
        unknown = set(fields) - set(_VALUES + _FLAGS)
        if unknown:
            raise TypeError(f"MoreThuente has no field {min(unknown)!r}")
        kept = {name: getattr(self, name) for name in _VALUES + _FLAGS}
        new = {name: jnp.asarray(value, kept[name].dtype) for name, value in fields.items()}
        return MoreThuente.of(self.stacked, **(kept | new))

    raw = _Field("values", "raw")
    stpmax = _Field("values", "stpmax")
    finit = _Field("values", "finit")
    ginit = _Field("values", "ginit")
    gtest = _Field("values", "gtest")
    stx = _Field("values", "stx")
    fx = _Field("values", "fx")
    gx = _Field("values", "gx")
    sty = _Field("values", "sty")
    fy = _Field("values", "fy")
    gy = _Field("values", "gy")
    width = _Field("values", "width")
    width1 = _Field("values", "width1")
    bracketed = _Field("flags", "bracketed")
    stage2 = _Field("flags", "stage2")


def more_thuente_start(
    f0: jax.Array,
    g0: jax.Array,
    stp: jax.Array,
    stpmax: jax.Array,
    ftol: float = 1e-3,
    stacked: bool = False,
) -> MoreThuente:
    """A fresh search from ``f(0) = f0``, ``f'(0) = g0 < 0``, first trial at ``stp``
    (``0 < stp <= stpmax``); ``stacked``: its layout (see ``MoreThuente``).

    ``ftol`` is the sufficient-decrease constant (dcsrch's name; c1 in Wolfe's terms);
    the smallest step is 0, as in L-BFGS-B.
    """
    dtype = jnp.result_type(f0)
    f0, g0 = jnp.asarray(f0, dtype), jnp.asarray(g0, dtype)
    stp, stpmax = jnp.asarray(stp, dtype), jnp.asarray(stpmax, dtype)
    zero = jnp.zeros((), dtype)
    return MoreThuente.of(
        stacked,
        raw=stp,
        stpmax=stpmax,
        finit=f0,
        ginit=g0,
        gtest=ftol * g0,
        stx=zero,
        fx=f0,
        gx=g0,
        sty=zero,
        fy=f0,
        gy=g0,
        width=stpmax,
        width1=2.0 * stpmax,
        bracketed=jnp.asarray(False),
        stage2=jnp.asarray(False),
    )


def _interval(s: MoreThuente) -> tuple[jax.Array, jax.Array]:
    """``[stmin, stmax]``, where the next step may go: the bracket once there is one,
    else the extrapolation range beyond ``stx`` (``[0, 5 stp]`` before the first trial,
    when ``stx`` is still 0 and nothing is bracketed)."""
    ahead = s.raw - s.stx
    first = ~s.bracketed & (s.stx == 0)
    stmin = jnp.where(
        s.bracketed, jnp.minimum(s.stx, s.sty), jnp.where(first, 0.0, s.raw + XTRAPL * ahead)
    )
    stmax = jnp.where(s.bracketed, jnp.maximum(s.stx, s.sty), s.raw + XTRAPU * ahead)
    return stmin, stmax


def more_thuente_step(s: MoreThuente, xtol: float = 0.1) -> jax.Array:
    """The step to evaluate (or, once the search ended, the accepted one): ``raw`` kept
    in ``[0, stpmax]``, and the best step ``stx`` when the bracket cannot shrink any more
    (or the interpolation was not finite)."""
    stp = jnp.clip(s.raw, 0.0, s.stpmax)
    stmin, stmax = _interval(s)
    stuck = s.bracketed & ((stp <= stmin) | (stp >= stmax) | (stmax - stmin <= xtol * stmax))
    return jnp.where(stuck | ~jnp.isfinite(stp), s.stx, stp)


def _cubic_gamma(theta, da, db):
    """``s * sqrt((theta/s)^2 - (da/s)(db/s))``, scaled against overflow (Moré–Thuente).

    The radicand is >= 0 in exact arithmetic wherever dcstep uses it unclamped; the clamp
    keeps rounding from turning it into NaN."""
    s = jnp.maximum(jnp.abs(theta), jnp.maximum(jnp.abs(da), jnp.abs(db)))
    s = jnp.where(s == 0, jnp.ones_like(s), s)
    radicand = (theta / s) ** 2 - (da / s) * (db / s)
    return s * safe_sqrt(radicand)


def _dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, bracketed, stpmin, stpmax):
    """One safeguarded interpolation step (dcstep): the new trial step and bracket.

    The four cases of Moré & Thuente (1994, sec. 4) are all computed and one selected:
    1. fp > fx: the minimizer is bracketed; cubic, or cubic/quadratic average.
    2. derivatives of opposite sign: bracketed; cubic or secant, the farther from stp.
    3. |dp| decreases: cubic if it tends to infinity beyond stp, else secant, safeguarded.
    4. |dp| does not decrease: cubic through (sty, stp) if bracketed, else stpmin/stpmax.
    """
    sgnd = dp * jnp.sign(dx)
    delta = stp - stx
    theta = 3.0 * safe_divide(fx - fp, delta) + dx + dp
    gamma = _cubic_gamma(theta, dx, dp)
    to_x = stx - stp

    # Case 1.
    g1 = jnp.where(stp < stx, -gamma, gamma)
    stpc1 = stx + safe_divide((g1 - dx) + theta, ((g1 - dx) + g1) + dp) * delta
    stpq1 = stx + 0.5 * safe_divide(dx, safe_divide(fx - fp, delta) + dx) * delta
    stpf1 = jnp.where(
        jnp.abs(stpc1 - stx) < jnp.abs(stpq1 - stx), stpc1, stpc1 + 0.5 * (stpq1 - stpc1)
    )
    # Cases 2 and 3 share the secant step toward stx.
    g23 = jnp.where(stp > stx, -gamma, gamma)
    stpq = stp + safe_divide(dp, dp - dx) * to_x
    stpc2 = stp + safe_divide((g23 - dp) + theta, ((g23 - dp) + g23) + dx) * to_x
    stpf2 = jnp.where(jnp.abs(stpc2 - stp) > jnp.abs(stpq - stp), stpc2, stpq)
    r3 = safe_divide((g23 - dp) + theta, (g23 + (dx - dp)) + g23)
    stpc3 = jnp.where((r3 < 0) & (g23 != 0), stp + r3 * to_x, jnp.where(stp > stx, stpmax, stpmin))
    closer = jnp.abs(stpc3 - stp) < jnp.abs(stpq - stp)
    reach = stp + 0.66 * (sty - stp)
    stpf3_br = jnp.where(closer, stpc3, stpq)
    stpf3_br = jnp.where(stp > stx, jnp.minimum(reach, stpf3_br), jnp.maximum(reach, stpf3_br))
    farther = jnp.abs(stpc3 - stp) > jnp.abs(stpq - stp)
    stpf3_free = jnp.clip(jnp.where(farther, stpc3, stpq), stpmin, stpmax)
    stpf3 = jnp.where(bracketed, stpf3_br, stpf3_free)
    # Case 4.
    theta4 = 3.0 * safe_divide(fp - fy, sty - stp) + dy + dp
    g4 = _cubic_gamma(theta4, dy, dp)
    g4 = jnp.where(stp > sty, -g4, g4)
    stpc4 = stp + safe_divide((g4 - dp) + theta4, ((g4 - dp) + g4) + dy) * (sty - stp)
    stpf4 = jnp.where(bracketed, stpc4, jnp.where(stp > stx, stpmax, stpmin))

    case1 = fp > fx
    case2 = ~case1 & (sgnd < 0)
    case3 = ~case1 & ~case2 & (jnp.abs(dp) < jnp.abs(dx))
    stpf = jnp.select([case1, case2, case3], [stpf1, stpf2, stpf3], stpf4)

    # Update the bracket: stx keeps the lowest f; sty the other end.
    new_sty = jnp.where(case1, stp, jnp.where(sgnd < 0, stx, sty))
    new_fy = jnp.where(case1, fp, jnp.where(sgnd < 0, fx, fy))
    new_dy = jnp.where(case1, dp, jnp.where(sgnd < 0, dx, dy))
    new_stx = jnp.where(case1, stx, stp)
    new_fx = jnp.where(case1, fx, fp)
    new_dx = jnp.where(case1, dx, dp)
    return new_stx, new_fx, new_dx, new_sty, new_fy, new_dy, stpf, bracketed | case1 | case2


def more_thuente_advance(
    search: MoreThuente, f: jax.Array, g: jax.Array, gtol: float = 0.9, xtol: float = 0.1
) -> tuple[MoreThuente, jax.Array]:
    """Consume ``f(stp)`` and ``f'(stp)`` at ``stp = more_thuente_step(search)``, the step
    just evaluated (one dcsrch call).

    Args:
      search: the state.
      f, g: the value and the directional derivative at that step.
      gtol: the curvature constant (|f'(stp)| <= gtol |f'(0)|).
      xtol: the relative bracket width below which the search gives up with a warning.

    Returns:
      ``(search, task)`` with ``task`` a ``WolfeTask`` code (int32). On ``CONTINUE``,
      ``more_thuente_step(search)`` is the next step to evaluate; otherwise the evaluated
      step stands (a warning means it is the best the search could do, as in dcsrch).

    A step where f or f' is not finite is a rejected trial (dcsrch has no such case): it
    becomes the far end of the bracket, ``sty`` with ``fy = +inf``, and the next trial
    halves the distance from the best step ``stx`` toward it. Later interpolations that
    would use ``fy`` (not finite) bisect the bracket instead, so no step at or beyond it
    is tried again. A finite search takes exactly dcsrch's steps.
    """
    s = search
    dtype = s.raw.dtype
    f, g = jnp.asarray(f, dtype), jnp.asarray(g, dtype)
    finite = jnp.isfinite(f) & jnp.isfinite(g)
    stp = more_thuente_step(s, xtol)
    stmin, stmax = _interval(s)
    ftest = s.finit + stp * s.gtest
    stage2 = s.stage2 | (finite & (f <= ftest) & (g >= 0))
    task = jnp.select(
        [
            (f <= ftest) & (jnp.abs(g) <= gtol * (-s.ginit)),
            (stp == 0) & ((f > ftest) | (g >= s.gtest)),
            (stp == s.stpmax) & (f <= ftest) & (g <= s.gtest),
            s.bracketed & (stmax - stmin <= xtol * stmax),
            s.bracketed & ((stp <= stmin) | (stp >= stmax)),
        ],
        [
            WolfeTask.CONVERGED,
            WolfeTask.WARN_STPMIN,
            WolfeTask.WARN_STPMAX,
            WolfeTask.WARN_XTOL,
            WolfeTask.WARN_ROUNDING,
        ],
        WolfeTask.CONTINUE,
    ).astype(jnp.int32)
    task = jnp.where(finite, task, WolfeTask.CONTINUE)

    # In the first stage, while f is lower than at stx but without sufficient decrease,
    # interpolate the modified function psi(a) = f(a) - f(0) - a * gtest (sec. 3).
    shift = jnp.where(~stage2 & (f <= s.fx) & (f > ftest), s.gtest, jnp.zeros_like(s.gtest))
    stx, fx, gx, sty, fy, gy, raw, bracketed = _dcstep(
        s.stx,
        s.fx - s.stx * shift,
        s.gx - shift,
        s.sty,
        s.fy - s.sty * shift,
        s.gy - shift,
        stp,
        f - stp * shift,
        g - shift,
        s.bracketed,
        stmin,
        stmax,
    )
    fx, fy, gx, gy = fx + stx * shift, fy + sty * shift, gx + shift, gy + shift
    # Bisect when the bracket did not shrink enough over two steps, or when the
    # interpolation used the value at a non-finite end of it (case 4 of dcstep).
    span = jnp.abs(sty - stx)
    bisect = bracketed & ((span >= 0.66 * s.width1) | ~jnp.isfinite(fy))
    raw = jnp.where(bisect, stx + 0.5 * (sty - stx), raw)
    # A non-finite trial: the bracket's far end, halfway there next.
    fy, gy = jnp.where(finite, fy, jnp.inf), jnp.where(finite, gy, 0.0)
    sty = jnp.where(finite, sty, stp)
    stx, fx, gx = (
        jnp.where(finite, new, old) for new, old in ((stx, s.stx), (fx, s.fx), (gx, s.gx))
    )
    raw = jnp.where(finite, raw, s.stx + 0.5 * (stp - s.stx))
    bracketed = bracketed | ~finite
    span = jnp.abs(sty - stx)
    width1 = jnp.where(bracketed, s.width, s.width1)
    width = jnp.where(bracketed, span, s.width)
    moved = MoreThuente.of(
        s.stacked, raw=raw, stpmax=s.stpmax, finit=s.finit, ginit=s.ginit, gtest=s.gtest,
        stx=stx, fx=fx, gx=gx, sty=sty, fy=fy, gy=gy, width=width, width1=width1,
        bracketed=bracketed, stage2=stage2,
    )  # fmt: skip
    search = jax.tree.map(
        lambda a, b: jnp.where(task == WolfeTask.CONTINUE, a, b),
        moved,
        s.replaced(stage2=stage2),
    )
    return search, task
