"""The compact-form stepper (Byrd, Lu, Nocedal & Zhu 1995; Morales & Nocedal 2011): every
solve with bounds, and those without of more than ``TWO_LOOP_MAX_N`` variables.

Each iteration: the generalized Cauchy point along the projected gradient path
(``cauchy.py``), a subspace Newton step over the variables free there (the direct primal
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

import jax
import jax.numpy as jnp
import optax

from jaxopt_dict._method import StepOutcome, Stepper
from jaxopt_dict._tree import cond_or_select, dots, is_batched, materialize
from jaxopt_dict._tree import ravel as ravel_pytree
from jaxopt_dict.methods.lbfgs.cauchy import cauchy_point
from jaxopt_dict.methods.lbfgs.compact import (
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
from jaxopt_dict.methods.lbfgs.search import (
    Bounds,
    SearchState,
    clip,
    flat_bounds,
    gives_up,
    next_iterate,
    ratio_to_bounds,
    search_outcome,
    stacks_search,
    start_search,
    trial_point,
)


def _subspace_point(x, g, gcp, mem: Memory, mid, bounds: Bounds):
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
    ratio = ratio_to_bounds(xcp, du, bounds, free)
    blocking = jnp.argmin(ratio)
    alpha = jnp.minimum(ratio[blocking], 1.0)
    pulled = xcp + alpha * du
    snapped = jnp.where(du[blocking] > 0, upper[blocking], lower[blocking])
    pulled = jnp.where(alpha < 1.0, pulled.at[blocking].set(snapped), pulled)
    return jnp.clip(jnp.where(uphill, pulled, projected), lower, upper)


def _search_point(x, g, mem: Memory, bounds: Bounds | None, vg: jax.Array | None):
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


def compact_form_stepper(maxcor: int, maxls: int, bounded: bool) -> Stepper:
    """L-BFGS-B in the compact form: with bounds, and without them for n > TWO_LOOP_MAX_N."""

    def init(ev, box):
        x, unravel = ravel_pytree(ev.x)
        dtype = x.dtype
        g = ravel_pytree(ev.g)[0].astype(dtype)
        f = jnp.asarray(ev.f, dtype)
        bounds = flat_bounds(box, dtype) if bounded else None
        # With no pairs, B = I and the Cauchy point is P(x - g); there is no subspace step.
        z = clip(x - g, bounds)
        zero = jnp.zeros((), jnp.int32)
        stacked = stacks_search(x.shape[0], bounded=bounds is not None)
        d, gd0, search = start_search(x, f, g, z, zero, bounds, stacked)
        mem = memory_empty(maxcor, x.shape[0], dtype)
        # ``pair_products(memory, g)`` is only kept without bounds (``SearchState.vg``).
        vg = jnp.zeros((2 * maxcor + 2,), dtype) if bounds is None else None
        state = SearchState(mem, x, f, g, d, z, gd0, vg, search, zero, zero)
        return state, unravel(trial_point(state, bounds))

    def step(state: SearchState, ev, box, first=False):
        xe, unravel = ravel_pytree(ev.x)
        dtype = state.x.dtype
        xe = xe.astype(dtype)
        ge = ravel_pytree(ev.g)[0].astype(dtype)
        fe = jnp.asarray(ev.f, dtype)
        bounds = flat_bounds(box, dtype) if bounded else None
        y = ge - state.g
        # The trip's sums over n, in one reduction.
        gd, yy, dd, y_ge = dots((ge, state.d), (y, y), (state.d, state.d), (y, ge))
        trials = state.trials + 1
        # Most trials skip the interpolation (``search_outcome``); the scalar outputs
        # cross that cond stacked (``cond_stacked``: 12 fewer copy kernels on the trips
        # that skip, 0.89-0.93x the time of boxed solves at n = 10 and 100).
        batched = is_batched(ev.x)
        search, stp, sy, done, search_failed, push = search_outcome(
            state, fe, gd, trials, maxls, batched
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
            vg = None
        else:
            # One pass over the pairs gives both V^T y (for the update) and V^T g (for the
            # next direction); s's products are not needed without bounds.
            vg_old = state.vg
            assert vg_old is not None
            v_ge = pair_products(state.memory, ge)
            products = jnp.stack([jnp.zeros_like(v_ge), v_ge - vg_old])
            mem = memory_push(state.memory, s_new, y, sy, yy, ss, push, products, s_rows=False)
            pushed = pushed_products(state.memory, v_ge, stp * gd, y_ge)
            vg = jnp.where(push, pushed, jnp.where(done, v_ge, vg_old))
            vg = jnp.where(first, 0.0, vg)
        # A failed search drops the memory and retries steepest descent from x once.
        stored = mem  # equal to state.memory (v aside) unless a pair was stored
        # (R^-1 is only read through the valid slots, and a reset leaves none: the next
        # point needs no pass zeroing it; the stored memory gets one below.)
        mem = memory_reset(mem, search_failed)._replace(r_inv=stored.r_inv)
        x, f, g, iteration = next_iterate(state, xe, fe, ge, done, first)

        def next_search():
            z = _search_point(x, g, mem, bounds, vg)
            # Not finite (a factorization broke down) or not downhill: scipy drops the
            # memory and takes the Cauchy point of B = I, which is P(x - g) (as at x0).
            # (z - x summed tells whether z is finite, in the slope's reduction; a sum of
            # finite entries near the float maximum can overflow and also restart: harmless.)
            slope, total = dots((g, z - x), (jnp.ones_like(z), z - x))
            fresh = first | ~(jnp.isfinite(total) & (slope < 0))
            z = jnp.where(fresh, clip(x - g, bounds), z)
            new = (z, fresh, *start_search(x, f, g, z, iteration, bounds, search.stacked))
            # The state's dtypes (float64 constants must not promote a float32 solve).
            return optax.tree.cast_like(new, same_search())

        def same_search():
            return state.z, jnp.asarray(False), state.d, state.gd0, search

        # The next search is only needed when this one ended. With bounds, the other trips
        # (about one in six on 1000-D Rosenbrock in a box) skip the Cauchy point and the
        # subspace step in a cond: 25% less time per trip there (under vmap the cond is a
        # select and both run). Without bounds the next step is only H g, and the cond
        # pays once the search crosses it stacked (``MoreThuente``): trips 118 -> 88
        # kernels, 0.88-0.97x the time at n = 300 to 10,000 (per field, the cond's copies
        # had cost more than it saved). (Inside shard_map, the select: ``cond_or_select``.)
        z, fresh, d, gd0, new_search = cond_or_select(restart, next_search, same_search, batched)
        # One reset of the stored memory for both reasons (a pair is only stored on a
        # restart, so without one ``stored`` is the old memory: no select over it).
        reset = materialize(restart & (search_failed | fresh))
        mem = memory_reset(stored, reset)
        count_before = state.memory.count
        state = SearchState(
            # The buffer is written in place (unchanged unless a pair was stored).
            memory=mem,
            x=x,
            f=f,
            g=g,
            d=d,
            z=z,
            gd0=gd0,
            vg=vg,
            search=new_search,
            trials=jnp.where(restart, 0, trials),
            iter=iteration,
        )
        failed = gives_up(search_failed, count_before, state.gd0)
        return state, unravel(trial_point(state, bounds)), StepOutcome(done, failed)

    return Stepper(init, step, uses_ftol=True, step_starts=True, rejects_nonfinite=True)
