"""Differentiating through a solve by implicit differentiation at the solution.

At a minimizer x*(theta) of f(x, theta) the gradient vanishes, so differentiating
``grad_x f(x*(theta), theta) = 0`` gives ``H dx = -d_theta(grad_x f) dtheta`` with H the
Hessian at x*: one linear solve, whatever path the optimizer took, so memory does not grow
with the number of iterations and every method gets the same rule (Griewank & Walther,
"Evaluating Derivatives", sec. 15; Blondel et al. 2022, "Efficient and modular implicit
differentiation", eq. 2). With bounds the fixed point is that of the projected gradient:
coordinates on an active bound move only with their bound, and the solve is restricted to
the free coordinates (the same reduced system, with P the free-coordinate mask):
``(P H P + I - P) v = -P (H dx_A + d_theta(grad_x f) dtheta)``, ``dx = v + dx_A``.

The rule is a ``jax.custom_jvp``; its tangent is linear and the solve goes through
``lax.custom_linear_solve`` (conjugate gradients on Hessian-vector products, forward over
reverse), so JAX transposes it for ``jax.grad``/``jax.vjp`` and ``jax.jvp`` works too.

The derivative is that of the stationary point ``res.x`` is taken to be: meaningful only
as far as ``res.x`` is close to a minimizer. Where the linear solve does not converge (the
Hessian at ``res.x`` singular, or indefinite so that conjugate gradients break down) the
derivative is NaN, never a wrong number. Higher derivatives (``jax.hessian``,
``grad(grad)``) apply the same rule again: the rule's own solve is the differentiable one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._method import Box
from jaxopt_dict._tree import ravel as ravel_pytree
from jaxopt_dict._tree import varying_like

PyTree = Any


def _zero_tangent(primal: Any) -> Any:
    """A zero tangent of the right kind: float0 for integer and boolean outputs, varying
    over the mesh axes the primal varies over (inside ``shard_map``, where JAX checks
    that a custom JVP's tangents have their primals' types)."""
    dtype = jnp.result_type(primal)
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.zeros_like(primal)
    return varying_like(np.zeros(np.shape(primal), dtype=jax.dtypes.float0), primal)


def _instantiate(tangent: PyTree, primal: PyTree) -> PyTree:
    """Zeros (in the primal's dtype) where a float tangent is float0/None-like."""
    return jax.tree.map(
        lambda t, p: jnp.zeros_like(p) if t.dtype == jax.dtypes.float0 else t, tangent, primal
    )


def _float_tangent(tangent: Any, primal: Any) -> Any:
    """A tangent of ``primal``'s kind: float0 zeros for integer and boolean outputs."""
    if jnp.issubdtype(jnp.result_type(primal), jnp.inexact):
        return tangent
    return _zero_tangent(primal)


def active_masks(x: PyTree, box: Box | None) -> tuple[PyTree, PyTree] | None:
    """Where x sits on its lower and upper bound (``None`` without bounds)."""
    if box is None:
        return None
    at_lower = jax.tree.map(lambda v, lo: v <= lo, x, box.lower)
    at_upper = jax.tree.map(lambda v, hi, al: (v >= hi) & ~al, x, box.upper, at_lower)
    return at_lower, at_upper


def implicit_tangent(
    value_and_grad: Callable[[PyTree, tuple], tuple[jax.Array, PyTree]],
    x: PyTree,
    args: tuple,
    dargs: tuple,
    box: Box | None,
    dbox: Box | None,
    cg_maxiter: int | None = None,
    masks: tuple[PyTree, PyTree] | None = None,
) -> tuple[PyTree, jax.Array, PyTree]:
    """Tangents ``(dx, df, dg)`` of the solution, its value and gradient.

    Args:
      value_and_grad: ``(x, args) -> (f, g)``, the objective the solve minimized.
      x: the solution.
      args, dargs: the arguments and their tangents.
      box, dbox: the bounds and their tangents (``None`` without bounds).
      cg_maxiter: conjugate-gradient iterations (default: 10 * problem size).
      masks: where x is held by its lower and upper bound (default: ``active_masks``,
        x exactly on the bound).
    """

    def grad_x(x_, args_):
        return value_and_grad(x_, args_)[1]

    if masks is None:
        masks = active_masks(x, box)
    if masks is None:
        free = jax.tree.map(lambda v: jnp.ones_like(v), x)
        dx_active = jax.tree.map(jnp.zeros_like, x)
    else:
        at_lower, at_upper = masks
        assert box is not None and dbox is not None
        free = jax.tree.map(lambda lo, hi, v: (~lo & ~hi).astype(v.dtype), at_lower, at_upper, x)
        dlower = _instantiate(dbox.lower, box.lower)
        dupper = _instantiate(dbox.upper, box.upper)
        dx_active = jax.tree.map(
            lambda lo, hi, dl, du, v: jnp.where(lo, dl, jnp.where(hi, du, 0)).astype(v.dtype),
            at_lower,
            at_upper,
            dlower,
            dupper,
            x,
        )

    def hvp(v):
        return jax.jvp(lambda x_: grad_x(x_, args), (x,), (v,))[1]

    def reduced_hessian(v):
        # P H P v + (I - P) v: the Hessian on the free coordinates, identity elsewhere.
        hv = hvp(optax.tree.mul(free, v))
        return jax.tree.map(lambda p, h, w: p * h + (1 - p) * w, free, hv, v)

    _, dg_partial = jax.jvp(grad_x, (x, args), (dx_active, dargs))
    rhs = optax.tree.scale(-1.0, optax.tree.mul(free, dg_partial))
    # Solve in flat coordinates: custom_linear_solve transposes only when every entry of
    # its right-hand side is linear in the tangents, and a raveled vector is (a pytree
    # rhs may hold a leaf that is a constant zero, e.g. an unpenalized intercept).
    flat_rhs, unravel = ravel_pytree(rhs)

    def matvec(v):
        return ravel_pytree(reduced_hessian(unravel(v)))[0]

    def cg(matvec, b):
        tol = 1e-12 if b.dtype == jnp.float64 else 1e-6
        maxiter = cg_maxiter if cg_maxiter is not None else 10 * b.size
        v = jax.scipy.sparse.linalg.cg(matvec, b, tol=tol, maxiter=maxiter)[0]
        # Report a solve that did not converge (a singular or indefinite Hessian at
        # res.x, too few iterations) as NaN, never as a wrong number: the true residual,
        # against sqrt(tol) relative (rounding in CG's own residual stays far below it).
        residual = jnp.linalg.norm(matvec(v) - b)
        converged = residual <= jnp.sqrt(tol) * jnp.maximum(jnp.linalg.norm(b), 1e-300)
        return jnp.where(converged, v, jnp.nan)

    dx_free = unravel(jax.lax.custom_linear_solve(matvec, flat_rhs, cg, symmetric=True))
    dx = optax.tree.add(optax.tree.mul(free, dx_free), dx_active)
    _, (df, dg) = jax.jvp(value_and_grad, (x, args), (dx, dargs))
    return dx, df, dg


def with_implicit_diff(
    solve: Callable,
    objective_of: Callable,
    args_axes_of: Callable | None = None,
    aux_of: Callable | None = None,
    active_of: Callable | None = None,
) -> Callable:
    """Wrap ``solve(static, x0, args, dynamic, box) -> OptimizeResult`` in a custom JVP.

    ``objective_of(static)`` returns the ``value_and_grad(x, args)`` the solve minimized.
    ``x0`` and the numeric options get zero derivatives; ``args`` and ``box`` get the
    implicit-function derivative. With ``args_axes_of``, the solve is batched: ``x0`` and
    the result carry a leading batch axis of independent problems, each differentiated at
    its own solution; ``args_axes_of(static)`` gives each arg's batch axis (0, or ``None``
    for an arg shared by all problems, whose derivative then sums over them); the box is
    shared. ``aux_of(static)`` is the ``aux(x, args)`` function whose value the result
    carries as ``res.aux`` (``has_aux=True``): its tangent follows from dx and dargs.
    ``active_of(static)`` returns ``None`` (x on a bound exactly is held by it) or
    ``(res, box, dynamic) -> (at_lower, at_upper)`` from one problem's result, for solvers
    whose iterates stay strictly inside the box (least squares' "trf").
    """

    solve_diff = jax.custom_jvp(solve, nondiff_argnums=(0,))

    @solve_diff.defjvp
    def _jvp(static, primals, tangents):
        x0, args, dynamic, box = primals
        _, dargs, _, dbox = tangents
        # The solve itself again, not its undifferentiated body: under a second
        # differentiation (jax.hessian, grad(grad)) res.x then gets this same implicit
        # rule, instead of a derivative of the loop's iterations (silently wrong for
        # L-BFGS, refused in reverse mode for every method).
        res = solve_diff(static, x0, args, dynamic, box)
        masks_of = None if active_of is None else active_of(static)
        masks = None
        if masks_of is not None and box is not None:
            if args_axes_of is not None:  # one problem's result at a time
                masks_of = jax.vmap(masks_of, in_axes=(0, None, None))
            masks = masks_of(res, box, dynamic)
        tangent_of = functools.partial(implicit_tangent, objective_of(static))
        if args_axes_of is not None:
            axes = args_axes_of(static)
            tangent_of = jax.vmap(tangent_of, in_axes=(0, axes, axes, None, None, None, 0))
        dx, df, dg = tangent_of(res.x, args, dargs, box, dbox, None, masks)
        tangent = jax.tree.map(_zero_tangent, res)
        tangent = tangent._replace(x=dx, fun=df.astype(res.fun.dtype), jac=dg)
        if res.aux is not None:
            assert aux_of is not None
            aux = aux_of(static)
            aux_tangent = lambda x, a, dx_, da: jax.jvp(aux, (x, a), (dx_, da))[1]
            if args_axes_of is not None:
                axes = args_axes_of(static)
                aux_tangent = jax.vmap(aux_tangent, in_axes=(0, axes, 0, axes))
            daux = aux_tangent(res.x, args, dx, dargs)
            tangent = tangent._replace(aux=jax.tree.map(_float_tangent, daux, res.aux))
        return res, tangent

    return solve_diff
