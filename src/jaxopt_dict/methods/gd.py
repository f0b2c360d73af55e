"""Gradient descent: a fixed step (``learning_rate`` a number) or steepest descent with an
Armijo backtracking line search (``learning_rate=None``), projected when there are bounds.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jaxopt_dict._linesearch import (
    Backtracking,
    backtracking_advance,
    backtracking_start,
    backtracking_trial,
)
from jaxopt_dict._method import Method, StepOutcome, Stepper
from jaxopt_dict._options import Option, line_search_options
from jaxopt_dict._tree import projected_gradient
from jaxopt_dict.methods.optax_rules import optax_stepper


def _initial_step(f_prev, f, g_sq, last_step):
    """Nocedal & Wright (3.60): aim for the previous decrease, at most double the last step."""
    guess = 1.01 * 2.0 * (f_prev - f) / g_sq
    guess = jnp.where(jnp.isfinite(guess) & (guess > 0), guess, last_step)
    return jnp.minimum(guess, 2.0 * last_step)


def _line_search_stepper(maxls: int) -> Stepper:
    def init(ev, box):
        g_inf = optax.tree.norm(ev.g, ord=jnp.inf)
        step = 1.0 / jnp.maximum(1.0, g_inf)
        search = backtracking_start(ev, optax.tree.scale(-1.0, ev.g), step)
        return search, backtracking_trial(search, box)

    def step(search: Backtracking, ev, box):
        # The projected gradient: components pushing into an active bound do not move x,
        # and counting them would shrink every later step to nothing (a false FTOL stop).
        pg_sq = optax.tree.norm(projected_gradient(ev.x, ev.g, box), squared=True)
        next_step = _initial_step(search.f, ev.f, pg_sq, search.step_size)
        restarted = backtracking_start(ev, optax.tree.scale(-1.0, ev.g), next_step)
        search, accepted, failed = backtracking_advance(search, ev, maxls)
        search = optax.tree.where(accepted, restarted, search)
        return search, backtracking_trial(search, box), StepOutcome(accepted, failed)

    return Stepper(init, step, uses_ftol=True)


def make(opts) -> Stepper:
    if opts["learning_rate"] is None:
        return _line_search_stepper(opts["maxls"])
    return optax_stepper(optax.sgd(opts["learning_rate"]))


GD = Method(
    "GD",
    make,
    (Option("learning_rate", None, float, low=0.0, open_low=True, allow_none=True),)
    + line_search_options(),
    supports_bounds=True,
)
