"""L-BFGS-B (Byrd, Lu, Nocedal & Zhu 1995; Morales & Nocedal 2011) and L-BFGS, as scipy's
``setulb`` runs them, folded into the driver's one flat loop.

Each iteration: the generalized Cauchy point along the projected gradient path
(``_cauchy.py``), a subspace Newton step over the variables free there (the direct primal
method of scipy's ``subsm``), projected onto the box and pulled back to it when the
projection is not a descent direction (Morales & Nocedal 2011), then a Moré–Thuente
strong-Wolfe search along ``d = z - x`` whose steps stay at or below the largest feasible
one, so no point outside the box is ever evaluated. Without bounds the Cauchy point is
skipped and the step is the usual limited-memory quasi-Newton one.

scipy's choices are kept because they set its evaluation counts: the first step is
``min(1/||d||, stpmax)``, later ones start at 1; a pair is skipped when
``s^T y <= eps * (-g^T s)``; a line search that fails after ``maxls`` trials drops the
memory and retries steepest descent once before giving up; a direction that is not a
descent direction (or a singular middle matrix) also restarts from steepest descent.
Everything here is a pure function of the state and one evaluation: the driver calls
``fun``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxopt_dict._cauchy import cauchy_point
from jaxopt_dict._compact import (
    Memory,
    inverse_times,
    memory_empty,
    memory_push,
    memory_reset,
    middle_matrix,
    pair_products,
    pushed_products,
    reduced_inverse_times,
    w_times,
)
from jaxopt_dict._linesearch import (
    MoreThuente,
    WolfeTask,
    more_thuente_advance,
    more_thuente_start,
    more_thuente_step,
)
from jaxopt_dict._method import Box, Method, StepOutcome, Stepper
from jaxopt_dict._options import Option, line_search_options
from jaxopt_dict._tree import dots, materialize
from jaxopt_dict.methods.lbfgs import BIG_STEP, TWO_LOOP_MAX_N, WOLFE_GTOL, lbfgs_stepper


class _Bounds(NamedTuple):
    """The box, flat; ``constrained``/``boxed`` are scipy's ``cnstnd``/``boxed``."""

    lower: jax.Array
    upper: jax.Array
    constrained: jax.Array  # some variable has a finite bound
    boxed: jax.Array  # every variable has both bounds finite


class LbfgsbState(NamedTuple):
    """Where the solve is: the memory, the iterate the search started from, the search.

    Attributes:
      memory: the limited-memory matrix.
      x, f, g: the current iterate (flat), its value and gradient.
      d: the search direction; ``z`` the point ``x + d`` exactly as computed (it lies on
        the bounds the Cauchy point and the subspace step reached).
      gd0: ``g^T d`` at x (negative).
      vg: without bounds, ``pair_products(memory, g)``: it gives the next pair's products
        with the memory for free (``Y^T y = V g_new - V g``), saving passes over it.
      search: the Moré–Thuente state along d.
      trials: points evaluated in this search.
      iter: iterations accepted so far (the first search starts differently).
    """

    memory: Memory
    x: jax.Array
    f: jax.Array
    g: jax.Array
    d: jax.Array
    z: jax.Array
    gd0: jax.Array
    vg: jax.Array
    search: MoreThuente
    trials: jax.Array
    iter: jax.Array


def _flat_bounds(box: Box | None, dtype) -> _Bounds | None:
    if box is None:
        return None
    lower = ravel_pytree(box.lower)[0].astype(dtype)
    upper = ravel_pytree(box.upper)[0].astype(dtype)
    has_l, has_u = lower > -jnp.inf, upper < jnp.inf
    return _Bounds(lower, upper, jnp.any(has_l | has_u), jnp.all(has_l & has_u))


def _clip(v: jax.Array, bounds: _Bounds | None) -> jax.Array:
    return v if bounds is None else jnp.clip(v, bounds.lower, bounds.upper)


def _ratio_to_bounds(x, d, bounds: _Bounds, mask=True):
    """Per coordinate, the step along d to its bound (0 if already past, inf if none)."""
    room_l = bounds.lower - x
    room_u = bounds.upper - x
    down = mask & (d < 0) & (bounds.lower > -jnp.inf)
    up = mask & (d > 0) & (bounds.upper < jnp.inf)
    safe_d = jnp.where(d == 0, 1.0, d)
    return jnp.where(
        down,
        jnp.where(room_l >= 0, 0.0, room_l / safe_d),
        jnp.where(up, jnp.where(room_u <= 0, 0.0, room_u / safe_d), jnp.inf),
    )


def _subspace_point(x, g, gcp, mem: Memory, mid, bounds: _Bounds):
    """Minimize the model over the variables free at the Cauchy point; project onto the
    box and, if the projected point is not downhill from x, take the longest feasible
    fraction of the Newton step instead (Morales & Nocedal 2011, sec. 2)."""
    xcp, free = gcp.xcp, gcp.free
    r = -g - mem.theta * (xcp - x) + w_times(mem, mid @ gcp.c)  # -Z^T (g + B (xcp - x))
    r = jnp.where(free, r, 0.0)
    du = jnp.where(free, reduced_inverse_times(mem, free, r), 0.0)
    lower, upper = bounds.lower, bounds.upper
    projected = jnp.where(free, jnp.clip(xcp + du, lower, upper), xcp)
    on_bound = free & ((projected == lower) | (projected == upper))
    uphill = jnp.any(on_bound) & (jnp.dot(projected - x, g) > 0)
    ratio = _ratio_to_bounds(xcp, du, bounds, free)
    blocking = jnp.argmin(ratio)
    alpha = jnp.minimum(ratio[blocking], 1.0)
    pulled = xcp + alpha * du
    snapped = jnp.where(du[blocking] > 0, upper[blocking], lower[blocking])
    pulled = jnp.where(alpha < 1.0, pulled.at[blocking].set(snapped), pulled)
    return jnp.clip(jnp.where(uphill, pulled, projected), lower, upper)


def _search_point(x, g, mem: Memory, bounds: _Bounds | None, vg: jax.Array):
    """``z``: the Cauchy point refined by subspace minimization (scipy's iteration body
    up to the line search). Not finite if a factorization broke down."""
    if bounds is None:
        # The Cauchy point is skipped without bounds: z = x - H g over all variables.
        return x - inverse_times(mem, g, vg)
    mid = middle_matrix(mem)
    gcp = cauchy_point(x, g, bounds.lower, bounds.upper, mem, mid)
    with_memory = mem.count > 0
    # scipy skips the Cauchy point when nothing is bounded and it has pairs.
    skip = ~bounds.constrained & with_memory
    gcp = gcp._replace(
        xcp=jnp.where(skip, x, gcp.xcp),
        free=skip | gcp.free,
        c=jnp.where(skip, 0.0, gcp.c),
    )
    z = _subspace_point(x, g, gcp, mem, mid, bounds)
    return jnp.where(with_memory, z, gcp.xcp)


def _max_step(x, d, bounds: _Bounds | None):
    """The largest step along d that stays in the box, at most ``BIG_STEP`` (lnsrlb)."""
    if bounds is None:
        return jnp.asarray(BIG_STEP, x.dtype)
    return jnp.minimum(jnp.min(_ratio_to_bounds(x, d, bounds)), BIG_STEP)


def _start_search(x, f, g, z, iteration, bounds: _Bounds | None):
    """The search along ``d = z - x`` with scipy's first step and step bound."""
    d = z - x
    gd0, d_squared = dots((g, d), (d, d))
    first = iteration == 0
    constrained = False if bounds is None else bounds.constrained
    stpmax = jnp.where(first & constrained, 1.0, _max_step(x, d, bounds)).astype(x.dtype)
    boxed = False if bounds is None else bounds.boxed
    norm = jnp.sqrt(d_squared)
    inv_norm = 1.0 / jnp.where(norm > 0, norm, 1.0)
    stp = jnp.where(first & ~boxed, jnp.minimum(inv_norm, stpmax), 1.0)
    return d, gd0, more_thuente_start(f, gd0, stp, stpmax)


def _trial(state: LbfgsbState, bounds: _Bounds | None) -> jax.Array:
    """``x + stp d``; exactly z at stp = 1, clipped against rounding otherwise."""
    stp = more_thuente_step(state.search)
    return jnp.where(stp == 1.0, state.z, _clip(state.x + stp * state.d, bounds))


def _stepper(maxcor: int, maxls: int, bounded: bool) -> Stepper:
    def init(ev, box):
        x, unravel = ravel_pytree(ev.x)
        dtype = x.dtype
        g = ravel_pytree(ev.g)[0].astype(dtype)
        f = jnp.asarray(ev.f, dtype)
        bounds = _flat_bounds(box, dtype) if bounded else None
        # With no pairs, B = I and the Cauchy point is P(x - g); there is no subspace step.
        z = _clip(x - g, bounds)
        zero = jnp.zeros((), jnp.int32)
        d, gd0, search = _start_search(x, f, g, z, zero, bounds)
        mem = memory_empty(maxcor, x.shape[0], dtype)
        vg = jnp.zeros((2 * maxcor + 2,), dtype)
        state = LbfgsbState(mem, x, f, g, d, z, gd0, vg, search, zero, zero)
        return state, unravel(_trial(state, bounds))

    def step(state: LbfgsbState, ev, box, first=False):
        xe, unravel = ravel_pytree(ev.x)
        dtype = state.x.dtype
        xe = xe.astype(dtype)
        ge = ravel_pytree(ev.g)[0].astype(dtype)
        fe = jnp.asarray(ev.f, dtype)
        bounds = _flat_bounds(box, dtype) if bounded else None
        y = ge - state.g
        # The trip's sums over n, in one reduction.
        gd, yy, dd, y_ge = dots((ge, state.d), (y, y), (state.d, state.d), (y, ge))
        trials = state.trials + 1
        s0 = state.search
        wolfe = (fe <= s0.finit + more_thuente_step(s0) * s0.gtest) & (
            jnp.abs(gd) <= WOLFE_GTOL * -s0.ginit
        )

        def outcome(interpolate: bool):
            """The search's verdict on this trial and the scalars that follow from it."""
            stp = more_thuente_step(s0)
            if interpolate:
                search, task = more_thuente_advance(s0, fe, gd, gtol=WOLFE_GTOL)
            else:
                search, task = s0, jnp.asarray(WolfeTask.CONVERGED, jnp.int32)
            done = task != WolfeTask.CONTINUE
            # The pair from the line search; scipy takes s^T y from the slopes along d and
            # skips it unless s^T y > eps * (-g^T s).
            sy = (gd - state.gd0) * stp
            push = done & (sy > jnp.finfo(dtype).eps * (-state.gd0 * stp))
            return search, stp, sy, done, ~done & (trials >= maxls), push

        # Most trials satisfy both Wolfe conditions at once and skip the interpolation.
        # The cond also has XLA materialize these scalars once, instead of copying their
        # computation into every fusion that uses one (a 3x larger, slower program).
        search, stp, sy, done, search_failed, push = jax.lax.cond(
            wolfe, lambda: outcome(False), lambda: outcome(True)
        )
        # On the first trip the evaluation is x0's: it is taken as a finished search
        # with nothing to store, and the restart below makes init's state from it.
        done = done | first
        search_failed = search_failed & ~first
        push = push & ~first
        restart = done | search_failed

        s_new = stp * state.d
        ss = stp * stp * dd
        # Materialize the per-problem scalars once. Under vmap the cond above is a select
        # and XLA would otherwise recompute this whole scalar chain (evaluation included)
        # inside every fusion over the (2k, 2k) and (k, k) matrices, per element.
        search, stp, sy, yy, ss, done, search_failed, push, restart = materialize(
            (search, stp, sy, yy, ss, done, search_failed, push, restart)
        )
        if bounds is not None:
            mem = memory_push(state.memory, s_new, y, sy, yy, ss, push)
            vg = state.vg
        else:
            # One pass over the pairs gives both V^T y (for the update) and V^T g (for the
            # next direction); s's products are not needed without bounds.
            v_ge = pair_products(state.memory, ge)
            products = jnp.stack([jnp.zeros_like(v_ge), v_ge - state.vg])
            mem = memory_push(state.memory, s_new, y, sy, yy, ss, push, products, s_rows=False)
            pushed = pushed_products(state.memory, v_ge, stp * gd, y_ge)
            vg = jnp.where(push, pushed, jnp.where(done, v_ge, state.vg))
            vg = jnp.where(first, 0.0, vg)
        # A failed search drops the memory and retries steepest descent from x once.
        stored = mem  # equal to state.memory (v aside) unless a pair was stored
        # (R^-1 is only read through the valid slots, and a reset leaves none: the next
        # point needs no pass zeroing it; the stored memory gets one below.)
        mem = memory_reset(mem, search_failed)._replace(r_inv=stored.r_inv)
        x = jnp.where(done, xe, state.x)
        f = jnp.where(done, fe, state.f)
        g = jnp.where(done, ge, state.g)
        iteration = jnp.where(first, 0, state.iter + done.astype(jnp.int32))
        z = _search_point(x, g, mem, bounds, vg)
        # Not finite (a factorization broke down) or not downhill: scipy drops the memory
        # and takes the Cauchy point of B = I, which is P(x - g) (as at x0).
        # (z - x summed tells whether z is finite, in the slope's reduction; a sum of
        # finite entries near the float maximum can overflow and also restart: harmless.)
        slope, total = dots((g, z - x), (jnp.ones_like(z), z - x))
        fresh = first | ~(jnp.isfinite(total) & (slope < 0))
        z = jnp.where(fresh, _clip(x - g, bounds), z)
        # One reset of the stored memory for both reasons (a pair is only stored on a
        # restart, so without one ``stored`` is the old memory: no select over it).
        reset = materialize(restart & (search_failed | fresh))
        mem = memory_reset(stored, reset)
        d, gd0, new_search = _start_search(x, f, g, z, iteration, bounds)
        pick = lambda a, b: jnp.where(restart, a, b)
        count_before = state.memory.count
        state = LbfgsbState(
            # The buffer is written in place (unchanged unless a pair was stored).
            memory=mem,
            x=x,
            f=f,
            g=g,
            d=pick(d, state.d),
            z=pick(z, state.z),
            gd0=pick(gd0, state.gd0),
            vg=vg,
            search=jax.tree.map(pick, new_search, search),
            trials=jnp.where(restart, 0, trials),
            iter=iteration,
        )
        # Give up when a search fails with an empty memory already (nothing to drop), or
        # when not even steepest descent goes downhill.
        failed = (search_failed & (count_before == 0)) | ~(state.gd0 < 0)
        return state, unravel(_trial(state, bounds)), StepOutcome(done, failed)

    return Stepper(init, step, uses_ftol=True, step_starts=True)


def _dispatch(maxcor: int, maxls: int, bounded: bool) -> Stepper:
    """The stepper for one solve, chosen when it is traced (x's size and whether bounds
    were given are static): L-BFGS-B proper with bounds; without, for small problems
    (``n <= TWO_LOOP_MAX_N``), the two-loop L-BFGS of ``lbfgs.py``, which carries a few
    small arrays instead of the (2m)^2 compact matrices (a vmapped batch of 2-D problems
    runs 2.5-3x faster); for larger ones the compact form here, whose few large products
    beat the two-loop's 2m dependent passes (2x on one 1000-D Rosenbrock). All take
    scipy's steps."""
    compact = _stepper(maxcor, maxls, bounded)
    two_loop = lbfgs_stepper(maxcor, maxls)

    def pick(ev, box):
        small = sum(leaf.size for leaf in jax.tree.leaves(ev.x)) <= TWO_LOOP_MAX_N
        return two_loop if (box is None or not bounded) and small else compact

    return Stepper(
        lambda ev, box: pick(ev, box).init(ev, box),
        lambda state, ev, box, first=False: pick(ev, box).step(state, ev, box, first),
        uses_ftol=True,
        step_starts=True,
    )


def _options() -> tuple[Option, ...]:
    return (Option("maxcor", 10, int, static=True, low=1),) + line_search_options()


LBFGSB = Method(
    "L-BFGS-B",
    lambda opts: _dispatch(opts["maxcor"], opts["maxls"], bounded=True),
    _options(),
    supports_bounds=True,
    default_maxiter=15000,
)

LBFGS = Method(
    "L-BFGS",
    lambda opts: _dispatch(opts["maxcor"], opts["maxls"], bounded=False),
    _options(),
    default_maxiter=15000,
)
