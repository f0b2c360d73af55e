"""PG, the inverse-simulator update: a Newton step in the simulator's output space y,
mapped back to x by the inverse simulator.

``fun`` is the loss ``L(y)`` in the simulator's output space; ``options["physics"]`` is the
simulator ``y(x)`` and ``options["physics_inv"]`` (optional) its inverse ``y -> x``. Each
iteration, at the current x::

    y        = physics(x)
    y_target = y - learning_rate * H_L(y)^{-1} grad L(y)      # Newton step in y space
    x_next   = physics_inv(y_target)                          # or, without physics_inv,
             = argmin_x ||physics(x) - y_target||^2           # an inner L-BFGS solve

Where ``fun`` is evaluated: exactly once per trip of the driver's loop, and nowhere else.
The driver evaluates PG's objective (``PhysicsObjective.evaluate``), which at x computes
``y = physics(x)``, then ``L(y)``, ``grad L(y)`` and ``H_L(y)`` in one go from the user's
``fun`` (the Hessian by ``jax.jacobian`` of the gradient on ``ravel_pytree(y)``, as Newton
does), and the x-gradient ``J_physics(x)^T grad L(y)`` by one VJP. So the driver sees the
objective ``x -> L(physics(x))``: ``res.fun`` is ``L(physics(res.x))`` and ``gtol`` applies to
the gradient of ``L(physics(x))`` in x, as for any objective. The y-space quantities reach the step
in ``Evaluation.aux``; the step itself only solves ``H d = -g`` (``newton_direction``,
Newton's modified Cholesky) and applies the inverse. Nothing sits in a ``lax.cond``
branch except, for more than 16 unknowns, that solve's fallback factorization.

The numerical inverse is the package's one nested solve: its own driver
(``_loop.run``) with the L-BFGS method (``methods/lbfgs``'s ``LBFGS``), warm-started at
the current x, inside the same compiled program. It evaluates ``physics`` only, never
``fun``. Its budget and tolerance are the options ``inner_maxiter`` (default 15000) and
``inner_gtol`` (default 1e-5), scipy's ``fmin_l_bfgs_b`` defaults, which the PBDL
chapter's numerical inverse uses (``inner_gtol`` relative to the step in y when that is
below 1: ``_numerical_inverse``); the rest are L-BFGS's defaults. On the chapter's example
(float32) its iterates stay within 3e-6 of the analytic inverse's, as the chapter's scipy
version does. The inner solve
appears once in the program: ``step`` also does the first trip (``step_starts``), and
``init`` is only traced for its types.

``learning_rate`` defaults to 1.0: the full Newton step in y space, which for a quadratic
``L`` lands on its minimizer in one iteration when the simulator can reach it. Every step is
taken (there is no line search), so with ``gtol=0`` and ``maxiter=k`` PG takes exactly k
plain update steps and reproduces textbook trajectories to float32 rounding.

References:
  Holl, Koltun & Thuerey, "Scale-invariant learning by physics inversion", NeurIPS 2022.
  Thuerey et al., Physics-based Deep Learning, chapter "Simple example comparing different
  optimizers" (the GD / Newton / PG comparison on y(x) = [x0, x1^2]).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxopt_dict._loop import LoopConfig, run
from jaxopt_dict._method import Evaluation, Method, StepOutcome, Stepper
from jaxopt_dict._options import Option, option_specs, resolve_options, split_static
from jaxopt_dict._problem import Objective
from jaxopt_dict.methods.lbfgs import LBFGS
from jaxopt_dict.methods.newton import newton_direction

PyTree = Any

INNER_METHOD = LBFGS  # the numerical inverse's method (the record, not a registry name)


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)), tree)


class PhysicsObjective(NamedTuple):
    """What the driver evaluates for PG: ``x -> L(physics(x))``, with L's y-space gradient
    and Hessian as by-products (``Evaluation.aux``). Hashable: it keys the jit cache."""

    loss: Objective  # L(y), as the user gave fun / jac
    physics: Callable[[PyTree], PyTree]
    physics_inv: Callable[[PyTree], PyTree] | None = None

    def check(self, x0: PyTree, args: tuple) -> None:
        """Trace ``physics``, ``fun`` at y, and ``physics_inv`` abstractly (no compilation).

        Raises:
          TypeError: ``physics`` returns non-float leaves, ``fun`` misbehaves at y (see
            ``Objective.check``), or ``physics_inv`` does not return x0's structure.
        """
        y = jax.eval_shape(self.physics, _abstract(x0))
        for path, leaf in jax.tree_util.tree_flatten_with_path(y)[0]:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(
                    f"options['physics'] must return floating arrays; y{jax.tree_util.keystr(path)}"
                    f" has dtype {leaf.dtype}."
                )
        self.loss.check(y, args)
        if self.physics_inv is not None:
            back = jax.eval_shape(self.physics_inv, y)
            want = _abstract(x0)
            if jax.tree.structure(back) != jax.tree.structure(want) or any(
                b.shape != w.shape for b, w in zip(jax.tree.leaves(back), jax.tree.leaves(want))
            ):
                raise TypeError(
                    "options['physics_inv'] must map y back to x0's structure and shapes; it "
                    f"returned {back}, x0 is {want}."
                )

    def closures(self, x0: PyTree) -> tuple[tuple[str, Callable, tuple, str], ...]:
        """``physics`` and ``physics_inv`` with example inputs: the front door refuses them
        where they close over a value the caller differentiates in (the implicit
        derivative would be zero in it; ``_problem.refuse_differentiated_closure``)."""
        fix = "Use options={'adjoint': 'unrolled'}, which differentiates the iterations."
        found = [("options['physics']", self.physics, (x0,), fix)]
        if self.physics_inv is not None:
            y = jax.tree.map(
                lambda t: jnp.zeros(t.shape, t.dtype), jax.eval_shape(self.physics, x0)
            )
            found.append(("options['physics_inv']", self.physics_inv, (y,), fix))
        return tuple(found)

    def value_and_grad(self, x: PyTree, args: tuple) -> tuple[jax.Array, PyTree]:
        """``L(physics(x))`` and its gradient in x (one VJP through ``physics``)."""
        y, pullback = jax.vjp(self.physics, x)
        f, g_y = self.loss.value_and_grad(y, args)
        (g,) = pullback(g_y)
        return f, optax.tree.cast_like(g, x)

    def evaluate(self, x: PyTree, args: tuple, hessian: bool = False) -> Evaluation:
        """The driver's one evaluation per trip: f and g in x, ``(y, grad L, H_L)`` as aux.

        ``hessian`` (the x-space Hessian) is not used by PG and is ignored.
        """
        del hessian
        y, pullback = jax.vjp(self.physics, x)
        ev_y = self.loss.evaluate(y, args, hessian=True)
        (g,) = pullback(ev_y.g)
        return Evaluation(x, ev_y.f, optax.tree.cast_like(g, x), aux=(y, ev_y.g, ev_y.hess))


def prepare(objective: Objective, opts: Mapping[str, Any]) -> PhysicsObjective:
    """Front-door hook: PG needs ``physics``; the driver evaluates ``L(physics(x))``.

    Raises:
      ValueError: ``options["physics"]`` is missing, or it or ``physics_inv`` is not
        callable (a wrong option value).
    """
    physics, physics_inv = opts["physics"], opts["physics_inv"]
    if physics is None:
        raise ValueError(
            "method 'PG' needs options['physics']: the simulator y = physics(x); fun is the "
            "loss L(y) in its output space (options['physics_inv'], y -> x, is optional)."
        )
    # Wrong option values, types included, are ValueErrors, as for every option.
    if not callable(physics):
        raise ValueError(  # noqa: TRY004
            f"options['physics'] must be callable, got {type(physics).__name__}."
        )
    if physics_inv is not None and not callable(physics_inv):
        raise ValueError(
            f"options['physics_inv'] must be callable, got {type(physics_inv).__name__}."
        )
    return PhysicsObjective(objective, physics, physics_inv)


def _numerical_inverse(
    physics, maxiter: int, gtol, unrolled: bool
) -> Callable[[PyTree, PyTree, jax.Array], PyTree]:
    """``(y_target, x_start, scale) -> argmin_x ||physics(x) - y_target||^2`` by the
    package's own driver running L-BFGS, warm-started at ``x_start``.

    ``gtol`` applies to the misfit divided by ``scale``, ``min(1, |y_target - y|)``: for a
    step in y below 1 the inner solve must shrink its gradient relative to where it starts.
    (With an absolute gtol, a small step in y left the warm start within it: x did not
    move, and the solve ended with XTOL short of maxiter's k steps at gtol = 0.)
    ``unrolled``: the outer solve is differentiated through its iterations
    (``adjoint="unrolled"``); so is this one, as a bounded checkpointed loop of the inner
    ``maxfun`` trips (reverse mode cannot differentiate a while_loop)."""
    method = INNER_METHOD
    specs = option_specs(method)
    resolved = resolve_options(method.name, specs, {"maxiter": maxiter})
    static, dynamic = split_static(specs, resolved)
    inner_opts = {**dict(static), **{k: jnp.asarray(v) for k, v in dynamic.items()}}
    inner_opts["gtol"] = gtol
    stepper = method.make(inner_opts)
    config = LoopConfig(maxiter=maxiter, unrolled_trips=resolved["maxfun"] if unrolled else None)

    def inverse(y_target, x_start, scale):
        def misfit(x):
            residual = optax.tree.sub(physics(x), y_target)
            return optax.tree.norm(residual, squared=True) / scale

        def evaluate(x):
            f, g = jax.value_and_grad(misfit)(x)
            return Evaluation(x, f, optax.tree.cast_like(g, x))

        return run(stepper, evaluate, x_start, None, inner_opts, config).x

    return inverse


def make(opts: Mapping[str, Any]) -> Stepper:
    learning_rate = opts["learning_rate"]
    inverse: Callable[[PyTree, PyTree, jax.Array], PyTree]
    if opts["physics_inv"] is not None:
        physics_inv = opts["physics_inv"]

        def exact_inverse(y_target, x_start, scale):
            del x_start, scale
            return physics_inv(y_target)

        inverse = exact_inverse
    else:
        unrolled = opts["adjoint"] == "unrolled"
        inverse = _numerical_inverse(
            opts["physics"], opts["inner_maxiter"], opts["inner_gtol"], unrolled
        )

    def update(ev: Evaluation) -> PyTree:
        y, g_y, hess_y = ev.aux
        flat_y, unravel = ravel_pytree(y)
        flat_g, _ = ravel_pytree(g_y)
        step = jnp.asarray(learning_rate, flat_y.dtype)
        dy = step * newton_direction(hess_y, flat_g)
        # The inner tolerance's scale (``_numerical_inverse``): the argmin does not depend
        # on it, so it carries no derivative (and the norm's is NaN at dy = 0).
        size = jnp.linalg.norm(jax.lax.stop_gradient(dy))
        scale = jnp.where(size > 0, jnp.minimum(size, 1.0), 1.0)
        return inverse(unravel(flat_y + dy), ev.x, scale)

    def init(ev, box):
        return (), update(ev)

    def step(state, ev, box, first=False):
        return state, update(ev), StepOutcome(accepted=True)

    return Stepper(init, step, step_starts=True)


PG = Method(
    "PG",
    make,
    (
        Option("learning_rate", 1.0, float, low=0.0, open_low=True),
        Option("physics", None, object, static=True, allow_none=True),
        Option("physics_inv", None, object, static=True, allow_none=True),
        Option("inner_maxiter", 15000, int, static=True, low=1),
        Option("inner_gtol", 1e-5, float, low=0.0),
    ),
    prepare=prepare,
)
