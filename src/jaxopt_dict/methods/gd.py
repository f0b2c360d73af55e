"""Gradient descent: a fixed step (``learning_rate`` a number) or steepest descent with an
Armijo backtracking line search (``learning_rate=None``), projected when there are bounds.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jaxopt_dict._linesearch import Backtracking, backtracking_stepper
from jaxopt_dict._method import Method, Stepper
from jaxopt_dict._options import Option, line_search_options
from jaxopt_dict._tree import inf_norm, projected_gradient, vdot
from jaxopt_dict.methods.optax_rules import optax_stepper


def _initial_step(f_prev, f, g_sq, last_step):
    """Nocedal & Wright (3.60): aim for the previous decrease, at most double the last step."""
    guess = 1.01 * 2.0 * (f_prev - f) / g_sq
    guess = jnp.where(jnp.isfinite(guess) & (guess > 0), guess, last_step)
    return jnp.minimum(guess, 2.0 * last_step)


def _first_step(ev, box):
    # ``_tree``'s reductions, not ``optax.tree.norm``: they promote across leaves of mixed
    # float32 / float64 also under strict dtype promotion.
    return 1.0 / jnp.maximum(1.0, inf_norm(ev.g))


def _next_step(search: Backtracking, ev, box):
    # The projected gradient: components pushing into an active bound do not move x,
    # and counting them would shrink every later step to nothing (a false FTOL stop).
    pg = projected_gradient(ev.x, ev.g, box)
    pg_sq = vdot(pg, pg)
    return _initial_step(search.f, ev.f, pg_sq, search.step_size)


def _steepest_descent(ev):
    return optax.tree.scale(-1.0, ev.g)


def make(opts) -> Stepper:
    if opts["learning_rate"] is None:
        return backtracking_stepper(
            _steepest_descent, _first_step, _next_step, opts["maxls"], opts["ftol"]
        )
    return optax_stepper(optax.sgd(opts["learning_rate"]))


GD = Method(
    "GD",
    make,
    (Option("learning_rate", None, float, low=0.0, open_low=True, allow_none=True),)
    + line_search_options(ftol=None),
    supports_bounds=True,
)
