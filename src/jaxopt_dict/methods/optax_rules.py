"""Methods that are one optax update rule run in the driver's loop: momentum, Adam, and
any ``optax.GradientTransformation`` a user passes as ``method``.

Each trip evaluates the point the previous update produced, so ``maxiter=k`` means exactly
k updates. With bounds, every update is followed by a projection onto the box.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxopt_dict._loop import STILL_STEPS
from jaxopt_dict._method import Method, StepOutcome, Stepper
from jaxopt_dict._options import Option
from jaxopt_dict._tree import inf_norms, project


class OptaxState(NamedTuple):
    """The rule's own state, and how much of its last update the box cut off."""

    opt_state: Any
    blocked_norm: jax.Array | None  # None without bounds


def _carries_state(tx: optax.GradientTransformation) -> bool:
    """Whether ``tx`` keeps arrays between updates (a velocity, moments, a count): then
    a small gradient or a step lost to rounding at one iterate does not mean it has come
    to rest (``Stepper.has_memory``). Plain ``optax.sgd`` keeps none."""
    try:
        state = jax.eval_shape(tx.init, jax.ShapeDtypeStruct((), jnp.float32))
    except Exception:  # noqa: BLE001 (a rule that cannot init on a scalar: assume it does)
        return True
    return bool(jax.tree.leaves(state))


def optax_stepper(tx: optax.GradientTransformation, still_steps: Any = None) -> Stepper:
    """A ``Stepper`` taking one ``tx`` update per trip, projected onto the box.

    The update gets optax's extra arguments ``value`` and ``grad`` (at the point being
    updated), which rules such as ``optax.polyak_sgd`` and ``optax.contrib.reduce_on_plateau``
    need; plain transformations ignore them. A rule that needs ``value_fn`` (a line search
    calling ``fun`` itself, as ``optax.lbfgs``) cannot run here: one evaluation per trip.

    With bounds, the step reports the part of the update the projection cut off
    (``StepOutcome.blocked_norm``): Adam pressed against a bound moves x by 0 while its
    velocity turns around, and stopped there with XTOL (``success=True``) short of an
    interior minimum. An x that stops changing because the update rounds away is still a
    stall (XTOL with the default ``xtol = 0``), once x has held still for ``still_steps``
    steps in a row (``Stepper.still_steps``).
    """
    tx = optax.with_extra_args_support(tx)

    def advance(opt_state, ev, box):
        try:
            # optax itself is not strict-promotion clean (``optax.adam``'s bias correction
            # raises a float to the int32 step count; a float64 learning rate makes float64
            # updates for float32 x): its own code runs under the standard rules, which give
            # the values it computes in any mode (issue 18).
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = tx.update(ev.g, opt_state, ev.x, value=ev.f, grad=ev.g)
                unclipped = optax.apply_updates(ev.x, updates)
        except TypeError as error:
            if "value_fn" not in str(error):
                raise
            raise TypeError(
                "This optax transformation needs value_fn (a line search that calls fun "
                "itself, as optax.lbfgs does); jaxopt_dict evaluates fun once per trip of its "
                "own loop. Use method='L-BFGS' (or 'L-BFGS-B') instead."
            ) from error
        x_next = project(unclipped, box)
        blocked = None
        if box is not None:
            (blocked,) = inf_norms(optax.tree.sub(unclipped, x_next))
            blocked = blocked.astype(ev.f.dtype)
        return OptaxState(opt_state, blocked), x_next

    def init(ev, box):
        return advance(tx.init(ev.x), ev, box)

    def step(state: OptaxState, ev, box, first=False):
        # A fresh state in the carried state's dtypes (float64 hyperparameters make the
        # carried one float64 for a float32 x; a select does not promote under strict rules).
        fresh = optax.tree.cast_like(tx.init(ev.x), state.opt_state)
        opt_state = optax.tree.where(first, fresh, state.opt_state)
        new_state, x_next = advance(opt_state, ev, box)
        # state.blocked_norm is about the step that led to ev.x (read on accepted trips).
        return new_state, x_next, StepOutcome(accepted=True, blocked_norm=state.blocked_norm)

    has_memory = _carries_state(tx)
    return Stepper(init, step, has_memory=has_memory, step_starts=True, still_steps=still_steps)


def optax_method(
    name: str,
    make_tx: Callable[[Mapping[str, Any]], optax.GradientTransformation],
    options: tuple[Option, ...] = (),
    memory: Callable[[Mapping[str, Any]], Any] | None = None,
) -> Method:
    """A bounds-capable ``Method`` from a function building the optax rule from options;
    ``memory(opts)``: the rule's memory in steps, if known (see ``_still_steps``)."""

    def make(opts):
        still = None if memory is None else _still_steps(memory(opts))
        return optax_stepper(make_tx(opts), still)

    return Method(name, make, options, supports_bounds=True)


def _still_steps(memory: Any) -> jax.Array:
    """Still steps before XTOL for a rule whose velocity or moments average over about
    ``memory`` steps: three times that, at least ``STILL_STEPS``. While x holds still its
    gradient is constant and the rule's state settles toward it at that rate; x moved on
    after still runs of 23 steps (momentum 0.9), 146 (momentum 0.99) and 378 (Adam's b2
    of 0.999), each 2.3x, 1.5x and 0.4x the memory, in float32 runs of the same rules in
    optax."""
    # Rounded, not ceil'd: 1 / (1 - 0.9) is 10.000000000000002 in float64 and 9.999998 in
    # float32; both give 30. (Clipped to int32; momentum near 1.)
    steps = jnp.clip(jnp.round(3.0 * memory), STILL_STEPS, 2**30)
    return steps.astype(jnp.int32)


# Heavy ball, TF core-API rule: dx = lr * g + p * dx_prev; x -= dx. optax's sgd keeps
# t = g + p * t_prev and steps -lr * t, the same iterates for a constant learning rate.
MOMENTUM = optax_method(
    "momentum",
    lambda o: optax.sgd(o["learning_rate"], momentum=o["momentum"]),
    (
        Option("learning_rate", 1e-2, float, low=0.0, open_low=True),
        Option("momentum", 0.9, float, low=0.0, high=1.0, open_high=True),
    ),
    memory=lambda o: 1.0 / (1.0 - jnp.asarray(o["momentum"])),
)

# Adam with bias correction, eps outside the square root: the optax and TF rule.
ADAM = optax_method(
    "Adam",
    lambda o: optax.adam(o["learning_rate"], b1=o["b1"], b2=o["b2"], eps=o["eps"]),
    (
        Option("learning_rate", 1e-3, float, low=0.0, open_low=True),
        Option("b1", 0.9, float, low=0.0, high=1.0, open_high=True),
        Option("b2", 0.999, float, low=0.0, high=1.0, open_high=True),
        Option("eps", 1e-8, float, low=0.0),
    ),
    memory=lambda o: 1.0 / (1.0 - jnp.maximum(jnp.asarray(o["b1"]), jnp.asarray(o["b2"]))),
)


@functools.lru_cache(maxsize=64)
def from_gradient_transformation(tx: optax.GradientTransformation) -> Method:
    """Wrap a user's optax transformation as a method (run to convergence, bounds ok).

    Cached, so passing the same ``tx`` again reuses the compiled solve.
    """
    return optax_method(f"optax:{type(tx).__name__}@{id(tx):x}", lambda _: tx)
