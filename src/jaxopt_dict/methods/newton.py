"""Newton's method: the Hessian by ``jax.jacobian`` twice on the flattened parameters,
solved by a Cholesky factorization, modified where the Hessian is not safely positive
definite (Gill–Murray–Wright for n <= 16, a shifted Cholesky of H + tau I above, see
``_modified_cholesky``); a backtracking line search or a fixed damped step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_dict._linesearch import backtracking_stepper
from jaxopt_dict._method import Evaluation, Method, StepOutcome, Stepper
from jaxopt_dict._modified_cholesky import modified_cholesky_solve
from jaxopt_dict._options import Option, line_search_options
from jaxopt_dict._tree import promoted
from jaxopt_dict._tree import ravel as ravel_pytree


def newton_direction(hess: jax.Array, grad: jax.Array) -> jax.Array:
    """Solve ``(H + E) d = -g`` by a modified Cholesky factorization: E = 0 where H is safely
    positive definite (the plain Newton step), else ``H + E`` positive definite, which keeps
    d a descent direction of sensible length near saddles and where H is indefinite
    (Nocedal & Wright sec. 3.4): GMW's diagonal E for n <= 16, above it ``E = tau I`` with
    the least tau found by doubling for which Cholesky succeeds (N&W Algorithm 3.3; see
    ``_modified_cholesky``)."""
    return -modified_cholesky_solve(hess, grad)


def _direction(ev: Evaluation):
    """The Newton direction; steepest descent where it is not finite (a Hessian that is
    not finite where f and g are, as for |x|^1.5 at 0), as L-BFGS-B falls back too."""
    assert ev.hess is not None
    flat_g, unravel = ravel_pytree(ev.g)
    d = newton_direction(ev.hess, flat_g)
    return unravel(jnp.where(jnp.all(jnp.isfinite(d)), d, -flat_g))


def _fixed_stepper(learning_rate) -> Stepper:
    def advance(ev):
        # x + lr * d, the promotions spelled out (a float64 learning rate, float32 x).
        scaled = lambda d: promoted(jnp.multiply, learning_rate, d)
        return jax.tree.map(lambda x, d: promoted(jnp.add, x, scaled(d)), ev.x, _direction(ev))

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
    + line_search_options(ftol=None),
    needs_hessian=True,
)
