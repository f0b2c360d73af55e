"""Newton's method: the Hessian by ``jax.jacobian`` twice on the flattened parameters,
solved by a Cholesky factorization, safeguarded by an eigendecomposition when the Hessian
is not positive definite; a backtracking line search or a fixed damped step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import optax
from jax.flatten_util import ravel_pytree

from jaxopt_dict._linesearch import backtracking_stepper
from jaxopt_dict._method import Evaluation, Method, StepOutcome, Stepper
from jaxopt_dict._options import Option, line_search_options


def newton_direction(hess: jax.Array, grad: jax.Array) -> jax.Array:
    """Solve ``H d = -g`` by Cholesky; if H is not positive definite, use the modified
    Hessian ``Q |Lambda| Q^T`` with eigenvalues floored (Nocedal & Wright sec. 3.4), which
    keeps d a descent direction and stays well scaled near saddles."""
    hess = 0.5 * (hess + hess.T)
    chol = jnp.linalg.cholesky(hess)
    d_chol = -jax.scipy.linalg.cho_solve((chol, True), grad)

    def modified():
        w, q = jnp.linalg.eigh(hess)
        eps = jnp.finfo(hess.dtype).eps
        floor = jnp.maximum(jnp.max(jnp.abs(w)) * jnp.sqrt(eps), jnp.finfo(hess.dtype).tiny)
        return -q @ ((q.T @ grad) / jnp.maximum(jnp.abs(w), floor))

    return jax.lax.cond(jnp.all(jnp.isfinite(d_chol)), lambda: d_chol, modified)


def _direction(ev: Evaluation):
    flat_g, unravel = ravel_pytree(ev.g)
    return unravel(newton_direction(ev.hess, flat_g))


def _fixed_stepper(learning_rate) -> Stepper:
    def advance(ev):
        return optax.tree.add_scale(ev.x, learning_rate, _direction(ev))

    def init(ev, box):
        return (), advance(ev)

    def step(state, ev, box, first=False):
        return state, advance(ev), StepOutcome(accepted=True)

    return Stepper(init, step, step_starts=True)


def _unit_step(*_):
    return 1.0


def make(opts) -> Stepper:
    if opts["learning_rate"] is None:
        # Newton's natural step is 1 (the minimizer of the local quadratic model).
        return backtracking_stepper(_direction, _unit_step, _unit_step, opts["maxls"])
    return _fixed_stepper(opts["learning_rate"])


NEWTON = Method(
    "Newton",
    make,
    (Option("learning_rate", None, float, low=0.0, open_low=True, allow_none=True),)
    + line_search_options(),
    needs_hessian=True,
)
