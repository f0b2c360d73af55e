"""What L-BFGS's two forms (``two_loop.py``, ``compact_stepper.py``) share:
the state around a search along ``d = z - x``, started and stepped as scipy's ``lnsrlb``
does, scipy's rules around it (when a search has ended, which pair is kept, when to
restart from steepest descent or give up), and the flat box the search respects.

scipy's choices here set its evaluation counts: the first search of a run starts at
``min(1/||d||, stpmax)`` (1 if every variable is boxed), later ones at 1; ``stpmax`` is the
largest step that stays in the box (1 on the first search of a constrained problem), at
most ``BIG_STEP``; the trial at step 1 is ``z`` exactly as computed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxopt_dict._method import Box
from jaxopt_dict._tree import (
    cond_stacked,
    dots,
    in_manual_mesh,
    safe_divide,
    safe_sqrt,
    traced_as_batch,
)
from jaxopt_dict._tree import ravel as ravel_pytree
from jaxopt_dict.methods.lbfgs.cauchy import has_window
from jaxopt_dict.methods.lbfgs.more_thuente import (
    MoreThuente,
    WolfeTask,
    more_thuente_advance,
    more_thuente_start,
    more_thuente_step,
)

BIG_STEP = 1e10  # scipy's stpmax when no bound limits the step
WOLFE_GTOL = 0.9  # dcsrch's curvature constant in L-BFGS-B (its ftol is 1e-3, xtol 0.1)


class Bounds(NamedTuple):
    """The box, flat; ``constrained``/``boxed`` are scipy's ``cnstnd``/``boxed``."""

    lower: jax.Array
    upper: jax.Array
    constrained: jax.Array  # some variable has a finite bound
    boxed: jax.Array  # every variable has both bounds finite


def flat_bounds(box: Box | None, dtype) -> Bounds | None:
    if box is None:
        return None
    lower = ravel_pytree(box.lower)[0].astype(dtype)
    upper = ravel_pytree(box.upper)[0].astype(dtype)
    has_l, has_u = lower > -jnp.inf, upper < jnp.inf
    return Bounds(lower, upper, jnp.any(has_l | has_u), jnp.all(has_l & has_u))


def clip(v: jax.Array, bounds: Bounds | None) -> jax.Array:
    return v if bounds is None else jnp.clip(v, bounds.lower, bounds.upper)


def ratio_to_bounds(x, d, bounds: Bounds, mask=True):
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


class SearchState(NamedTuple):
    """Where an L-BFGS(-B) solve is: the memory, the iterate the search started from, and
    the search (flat vectors).

    Attributes:
      memory: the limited-memory matrix (the method's own type).
      x, f, g: the current iterate, its value and gradient.
      d: the search direction; ``z`` the point ``x + d`` exactly as computed (with bounds
        it lies on those the Cauchy point and the subspace step reached).
      gd0: ``g^T d`` at x (negative).
      vg: in the compact form without bounds, ``pair_products(memory, g)``: it gives the
        next pair's products with the memory for free (``Y^T y = V g_new - V g``). None
        otherwise.
      search: the Moré–Thuente state along d.
      trials: points evaluated in this search.
      iter: iterations accepted so far (the first search starts differently).
    """

    memory: Any
    x: jax.Array
    f: jax.Array
    g: jax.Array
    d: jax.Array
    z: jax.Array
    gd0: jax.Array
    vg: jax.Array | None
    search: MoreThuente
    trials: jax.Array
    iter: jax.Array


def stacks_search(n: int, bounded: bool) -> bool:
    """Whether a solve of n variables carries its search stacked (``MoreThuente`` says
    where each layout was measured faster): a single solve, without bounds or where the
    Cauchy point has no window. Read from the trace (``traced_as_batch``), not from x's
    tracers: ``_loop.start`` also makes the state in ``eval_shape``, where no vmap tracer
    shows, and init and step must agree."""
    return not traced_as_batch() and (not bounded or not has_window(n))


def start_search(x, f, g, z, iteration, bounds: Bounds | None, stacked: bool = False):
    """The search along ``d = z - x`` with scipy's first step and step bound
    (``stacked``: the search state's layout, see ``MoreThuente``)."""
    d = z - x
    gd0, d_squared = dots((g, d), (d, d))
    first = iteration == 0
    if bounds is None:
        stpmax = jnp.asarray(BIG_STEP, x.dtype)
        starts_short = first
    else:
        reach = jnp.minimum(jnp.min(ratio_to_bounds(x, d, bounds)), BIG_STEP)
        stpmax = jnp.where(first & bounds.constrained, 1.0, reach).astype(x.dtype)
        starts_short = first & ~bounds.boxed
    inv_norm = safe_divide(1.0, safe_sqrt(d_squared))  # 1 where d = 0
    stp = jnp.where(starts_short, jnp.minimum(inv_norm, stpmax), 1.0)
    return d, gd0, more_thuente_start(f, gd0, stp, stpmax, stacked=stacked)


def trial_point(state: SearchState, bounds: Bounds | None) -> jax.Array:
    """``x + stp d``; exactly z at stp = 1, clipped against rounding otherwise."""
    stp = more_thuente_step(state.search)
    return jnp.where(stp == 1.0, state.z, clip(state.x + stp * state.d, bounds))


def search_ended(task, trials, maxls: int):
    """``(done, failed)``: the search ended at the evaluated step (dcsrch's task is not
    CONTINUE: converged, or one of its warnings, which scipy's ``lnsrlb`` accepts), or it
    failed: still going after ``maxls`` trials."""
    done = task != WolfeTask.CONTINUE
    return done, ~done & (trials >= maxls)


def pair_kept(gd, gd0, stp, dtype):
    """``(s^T y, keep)`` for the pair of a finished search: scipy takes ``s^T y`` from the
    slopes along d (``(g_new - g)^T d * stp``) and stores the pair only if
    ``s^T y > eps * (-g^T s)`` (``lnsrlb``/``matupd``)."""
    sy = (gd - gd0) * stp
    return sy, sy > jnp.finfo(dtype).eps * (-gd0 * stp)


def search_outcome(state: SearchState, fe, gd, trials, maxls: int, batched: bool):
    """The search's verdict on the trial just evaluated (value ``fe``, slope ``gd``):
    ``(search, stp, sy, done, failed, keep)``, with scipy's pair test (``pair_kept``).

    Most trials satisfy both strong-Wolfe conditions at once (dcsrch's first test), and a
    single solve then skips the interpolation in a cond (``cond_stacked``). The cond also
    has XLA compute these scalars once instead of copying their chain into every fusion
    that reads one. Under ``vmap`` (``batched``) or inside ``shard_map`` a cond would run
    both branches: the interpolation alone gives the same verdict (dcsrch tests the
    Wolfe conditions first, at a finite trial) and is what runs there."""
    s0, dtype = state.search, state.x.dtype
    stp = more_thuente_step(s0)  # the step just evaluated
    # (Finite as the interpolation requires: an f finite in fun's dtype may overflow to
    # -inf in x's, and a non-finite trial is rejected, never accepted.)
    wolfe = (
        jnp.isfinite(fe)
        & (fe <= s0.finit + stp * s0.gtest)
        & (jnp.abs(gd) <= WOLFE_GTOL * -s0.ginit)
    )

    def outcome(interpolate: bool):
        if interpolate:
            search, task = more_thuente_advance(s0, fe, gd, gtol=WOLFE_GTOL)
        else:
            search, task = s0, jnp.asarray(WolfeTask.CONVERGED, jnp.int32)
        done, search_failed = search_ended(task, trials, maxls)
        sy, keep = pair_kept(gd, state.gd0, stp, dtype)
        return search, stp, sy, done, search_failed, done & keep

    if batched or in_manual_mesh():  # a cond would run both: interpolate, as dcsrch does
        return outcome(True)
    return cond_stacked(wolfe, lambda: outcome(False), lambda: outcome(True))


def next_iterate(state: SearchState, xe, fe, ge, done, first):
    """``(x, f, g, iteration)``: the evaluated point becomes the iterate when its search
    is done; x0's trip (``first``) counts no iteration."""
    x = jnp.where(done, xe, state.x)
    f = jnp.where(done, fe, state.f)
    g = jnp.where(done, ge, state.g)
    iteration = jnp.where(first, 0, state.iter + done.astype(jnp.int32))
    return x, f, g, iteration


def gives_up(search_failed, pairs_before, gd0):
    """scipy's end of the road: a search failed with an empty memory already (nothing left
    to drop before retrying steepest descent), or not even steepest descent goes downhill
    (``gd0``: the slope of the new search)."""
    return (search_failed & (pairs_before == 0)) | ~(gd0 < 0)
