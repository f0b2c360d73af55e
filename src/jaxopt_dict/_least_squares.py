"""``least_squares``: scipy's other front door, on the same one-flat-loop driver.

The residuals and their Jacobian are one evaluation (``jax.jacfwd`` when n <= m, else
``jax.jacrev``, or the user's ``jac``); the robust loss turns them into the cost, its
gradient and the scaled residuals and Jacobian of scipy's
``scale_for_robust_loss_function`` (Triggs et al., "Bundle adjustment: a modern
synthesis", 2000, sec. 4.3); a method (``lsq_methods``) steps on those. The driver
(``_loop``) owns what it owns for ``minimize``: one evaluation per trip, maxfun,
NONFINITE, callback/disp/trace, and implicit differentiation of the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from jaxopt_dict._batch import batch_layout, with_hidden_args
from jaxopt_dict._method import Box, Evaluation
from jaxopt_dict._minimize import solve_reporting_errors
from jaxopt_dict._options import Option, resolve_options, split_static
from jaxopt_dict._problem import (
    Objective,
    canonicalize_bounds,
    canonicalize_x0,
    check_args,
    make_objective,
    refuse_differentiated_closure,
)
from jaxopt_dict._programs import SolveStatic, solve_queue, take_row
from jaxopt_dict._progress import require_tqdm
from jaxopt_dict._result import OptimizeResult
from jaxopt_dict._tree import flat_dtype_of, interval_holds_points, ravel
from jaxopt_dict.lsq_methods import LSQ_METHODS, resolve_lsq_method
from jaxopt_dict.lsq_methods._common import (
    LsqAux,
    cl_scaling,
    find_active_constraints,
    make_strictly_feasible,
)

PyTree = Any

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def loss_rho(loss: str | Callable, z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """scipy's robust losses: rho(z) and its first two derivatives at ``z = (r/f_scale)^2``.

    Branches that ``where`` discards are kept finite (their derivatives too), so the cost
    differentiates cleanly at z = 0 (implicit differentiation takes its Hessian).
    """
    one = jnp.ones_like(z)
    if callable(loss):
        rho = jnp.asarray(loss(z))
        return rho[0], rho[1], rho[2]
    if loss == "linear":
        return z, one, jnp.zeros_like(z)
    if loss == "huber":
        small = z <= 1
        zb = jnp.where(small, one, z)
        return (
            jnp.where(small, z, 2 * jnp.sqrt(zb) - 1),
            jnp.where(small, one, zb**-0.5),
            jnp.where(small, 0.0, -0.5 * zb**-1.5),
        )
    t = 1 + z
    if loss == "soft_l1":
        return 2 * (jnp.sqrt(t) - 1), t**-0.5, -0.5 * t**-1.5
    if loss == "cauchy":
        return jnp.log1p(z), 1 / t, -1 / t**2
    if loss == "arctan":
        t = 1 + z**2
        return jnp.arctan(z), 1 / t, -2 * z / t**2
    raise ValueError(f"unknown loss {loss!r}")  # the front door checked it


class LsqParts(NamedTuple):
    """One evaluation of a least-squares problem, on flat coordinates."""

    residuals: PyTree  # fun's output
    cost: jax.Array  # 0.5 * sum(rho(r^2)) (with f_scale)
    f: jax.Array  # residuals scaled for the loss (r itself for "linear")
    J: jax.Array  # their Jacobian, m x n (scaled rows for a robust loss)


class LsqObjective(NamedTuple):
    """The least-squares problem as the driver sees it (hashable: it keys the jit cache).

    ``args`` are ``(f_scale, *the objective's args)``: f_scale is data, so a new value
    does not recompile (and it is differentiable, as args are).
    """

    residuals: Objective  # the user's fun (and jac) returning residuals
    loss: Any = "linear"
    # "fwd" / "rev" (JAX's), "user" (the user's jac), "matvec" (never formed:
    # Jacobian-vector products of one linearization per evaluation)
    jacobian: str = "fwd"
    # How rows are scaled for a robust loss: "triggs" (scipy's, rho' + 2 rho'' z: for the
    # trust-region methods), or "irls" (rho' alone: Gauss-Newton's line search, whose
    # direction the floored Triggs rows of outliers made ~1/eps long).
    weighting: str = "triggs"

    def _bind(self, args: tuple):
        f_scale, rest = args[0], args[1:]
        fun, jac, user_args = self.residuals.bind(rest)
        return fun, jac, user_args, f_scale

    def _loss_scaling(
        self, r_flat: jax.Array, f_scale: Any
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """(cost, rho1, J_scale): the cost and scipy's row scaling of J for the loss
        (``J_scale = sqrt(max(rho1 + 2 rho2 r^2, eps))``, or ``sqrt(max(rho1, eps))`` for
        ``weighting="irls"``: both give the gradient ``J^T rho1 r``); ``None`` scaling for
        "linear"."""
        if isinstance(self.loss, str) and self.loss == "linear":
            return 0.5 * (r_flat @ r_flat), None, None
        dtype = r_flat.dtype
        f_scale = jnp.asarray(f_scale, dtype)
        rho0, rho1, rho2 = loss_rho(self.loss, (r_flat / f_scale) ** 2)
        cost = (0.5 * f_scale**2 * jnp.sum(rho0)).astype(dtype)
        eps = jnp.finfo(dtype).eps
        curvature = rho1
        if self.weighting == "triggs":
            curvature = rho1 + 2 * (rho2 / f_scale**2) * r_flat**2
        J_scale = jnp.sqrt(jnp.maximum(curvature, eps))
        return cost, rho1, J_scale

    def matvec_parts(self, x: PyTree, args: tuple):
        """Matrix-free (``options={"jac": "matvec"}``): the residuals, the cost, the scaled
        residuals f, ``B = [g, p]`` (the gradient and the Gauss-Newton direction ``p``,
        ``J^T J p = -g`` by conjugate gradients, at most 4 min(m, n) + 10 iterations) and
        ``J B``; J only as products with one linearization of fun."""
        fun, _, user_args, f_scale = self._bind(args)
        flat, unravel = ravel(x)
        r, linear = jax.linearize(lambda z: fun(unravel(z), *user_args), flat)
        r_flat = ravel(r)[0]
        dtype = jnp.promote_types(flat.dtype, r_flat.dtype)
        r_flat = r_flat.astype(dtype)
        flat_linear = lambda v: ravel(linear(v.astype(flat.dtype)))[0].astype(dtype)
        transposed = jax.linear_transpose(flat_linear, flat.astype(dtype))
        cost, rho1, J_scale = self._loss_scaling(r_flat, f_scale)
        if J_scale is None or rho1 is None:
            f, scale = r_flat, jnp.ones_like(r_flat)
        else:
            f, scale = r_flat * rho1 / J_scale, J_scale
        Jv = lambda v: scale * flat_linear(v)
        JTw = lambda w: transposed(scale * w)[0]
        g = JTw(f)
        # CG on the normal equations squares J's condition number, and rounding undoes
        # conjugacy: eps-level tolerance and 4 min(m, n) + 10 sweeps (sqrt(eps) with
        # 2 min(m, n) + 10, or min(m, n), lost Meyer's problem). On an ill-conditioned J
        # it runs to the cap: the price of not forming J (LSMR on J would do better).
        tol = float(10 * np.finfo(dtype).eps)
        p = jax.scipy.sparse.linalg.cg(
            lambda v: JTw(Jv(v)), -g, tol=tol, maxiter=4 * min(r_flat.size, flat.size) + 10
        )[0]
        B = jnp.stack([g, p], axis=1)
        JB = jax.vmap(Jv, in_axes=1, out_axes=1)(B)
        return r, cost, f, JB, B

    def parts(self, x: PyTree, args: tuple) -> LsqParts:
        """Residuals, cost, and the loss-scaled residuals and Jacobian at x."""
        fun, jac, user_args, f_scale = self._bind(args)
        flat, unravel = ravel(x)

        def flat_residuals(z):
            r = fun(unravel(z), *user_args)
            return ravel(r)[0], r

        if self.jacobian == "user":
            r = fun(x, *user_args)
            J = jacobian_matrix(jac(x, *user_args), r, x)
        else:
            jacobian = jax.jacfwd if self.jacobian == "fwd" else jax.jacrev
            J, r = jacobian(flat_residuals, has_aux=True)(flat)
        r_flat = ravel(r)[0]
        dtype = jnp.promote_types(flat.dtype, r_flat.dtype)
        r_flat, J = r_flat.astype(dtype), J.astype(dtype)
        cost, rho1, J_scale = self._loss_scaling(r_flat, f_scale)
        if J_scale is None or rho1 is None:
            return LsqParts(r, cost, r_flat, J)
        return LsqParts(r, cost, r_flat * rho1 / J_scale, J * J_scale[:, None])

    def evaluate(self, x: PyTree, args: tuple, hessian: bool = False) -> Evaluation:
        del hessian  # the methods use J (Gauss-Newton's J^T J), never the Hessian
        unravel = ravel(x)[1]
        if self.jacobian == "matvec":
            r, cost, f, JB, B = self.matvec_parts(x, args)
            aux = LsqAux(JB, f, B[:, 0], B)
            g = optax.tree.cast_like(unravel(aux.g), x)
            return Evaluation(x, cost, g, aux=aux, fun_aux=(r, None))
        p = self.parts(x, args)
        aux = LsqAux(p.J, p.f, p.J.T @ p.f)
        g = optax.tree.cast_like(unravel(aux.g), x)
        return Evaluation(x, p.cost, g, aux=aux, fun_aux=(p.residuals, p.J))

    def value_and_grad(self, x: PyTree, args: tuple) -> tuple[jax.Array, PyTree]:
        """The cost and its gradient (what implicit differentiation differentiates)."""
        if self.jacobian == "user":
            p = self.parts(x, args)
            return p.cost, optax.tree.cast_like(ravel(x)[1](p.J.T @ p.f), x)
        cost, g = jax.value_and_grad(lambda x_: self.parts_cost(x_, args))(x)
        return cost, optax.tree.cast_like(g, x)

    def parts_cost(self, x: PyTree, args: tuple) -> jax.Array:
        """The cost alone (no Jacobian): ``0.5 * sum(rho((r / f_scale)^2)) * f_scale^2``."""
        fun, _, user_args, f_scale = self._bind(args)
        r = ravel(fun(x, *user_args))[0]
        if isinstance(self.loss, str) and self.loss == "linear":
            return 0.5 * (r @ r)
        f_scale = jnp.asarray(f_scale, r.dtype)
        return 0.5 * f_scale**2 * jnp.sum(loss_rho(self.loss, (r / f_scale) ** 2)[0])

    def aux(self, x: PyTree, args: tuple) -> tuple[PyTree, jax.Array | None]:
        """The residuals and the (loss-scaled) Jacobian at x: ``res.fun`` and ``res.jac``
        (``None`` matrix-free)."""
        if self.jacobian == "matvec":
            fun, _, user_args, _ = self._bind(args)
            return fun(x, *user_args), None
        p = self.parts(x, args)
        return p.residuals, p.J

    def shapes(self, x0: PyTree, args: tuple) -> tuple[int, int]:
        """``(m, n)``, after checking what ``fun`` (and ``jac``) return, abstractly.

        Raises:
          TypeError: ``fun``/``jac`` not callable, residuals that are not a pytree of real
            float arrays, or a ``jac`` of the wrong shape.
        """
        fun = self._bind(args)[0]
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}.")
        abstract = lambda t: jax.tree.map(
            lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)), t
        )
        x_abs, args_abs = abstract(x0), abstract(args)
        out = jax.eval_shape(lambda x, a: self._bind(a)[0](x, *self._bind(a)[2]), x_abs, args_abs)
        leaves = jax.tree.leaves(out)
        if not leaves or not all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves):
            raise TypeError(
                "fun must return the residuals: an array or a pytree of float arrays, got "
                f"{jax.tree.structure(out)}."
            )
        for leaf in leaves:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"fun must return real float residuals, got dtype {leaf.dtype}.")
        m = sum(int(np.prod(leaf.shape)) for leaf in leaves)
        n = sum(int(np.prod(jnp.shape(v))) for v in jax.tree.leaves(x0))
        if m == 0:
            raise TypeError("fun returned no residuals (m = 0).")
        if self.jacobian == "user":
            J = jax.eval_shape(
                lambda x, a: jacobian_matrix(
                    self._bind(a)[1](x, *self._bind(a)[2]),
                    self._bind(a)[0](x, *self._bind(a)[2]),
                    x,
                ),
                x_abs,
                args_abs,
            )
            if J.shape != (m, n):
                raise TypeError(f"jac must give an {m} x {n} Jacobian, got shape {J.shape}.")
        return m, n

    def active_masks(self, res: OptimizeResult, box: Box, dynamic: Mapping[str, Any]):
        """Where the solution is held by a bound, for implicit differentiation: the gradient
        pushes x out of the box there and the one-coordinate Gauss-Newton step
        ``|g_i| / ||J_i||^2`` would cross the bound (trf stops inside the box, at a
        distance that depends on the dtype and the tolerances, so a distance test alone
        misses bounds in float32 or with xtol=None). Matrix-free (no J): within
        ``sqrt(eps) * max(1, |bound|)`` of the bound the gradient pushes toward.
        ``res`` is the driver's result: ``jac`` the gradient, ``aux`` (residuals, J)."""
        x, unravel = ravel(res.x)
        g = ravel(res.jac)[0].astype(x.dtype)
        lower, upper = ravel(box.lower)[0], ravel(box.upper)[0]
        v, dv = cl_scaling(x, g, lower, upper)
        J = res.aux[1]
        if J is not None:
            held = v * jnp.sum(J.astype(x.dtype) ** 2, axis=0) < jnp.abs(g)
        else:
            bound = jnp.where(dv > 0, lower, upper)
            held = v <= jnp.sqrt(jnp.finfo(x.dtype).eps) * jnp.maximum(1, jnp.abs(bound))
        held = held & (dv != 0) & (g != 0)
        as_tree = lambda mask: jax.tree.map(lambda leaf: leaf > 0.5, unravel(mask.astype(x.dtype)))
        return as_tree(held & (dv > 0)), as_tree(held & (dv < 0))


def jacobian_matrix(jac: Any, residuals: PyTree, x: PyTree) -> jax.Array:
    """A user's Jacobian as an m x n matrix on flattened coordinates: given as that matrix
    already, or as ``jax.jacobian`` gives it (for each residual leaf, a pytree of x's
    structure whose leaves have shape ``r_leaf.shape + x_leaf.shape``)."""
    r_leaves, r_def = jax.tree.flatten(residuals)
    x_leaves, x_def = jax.tree.flatten(x)
    m = sum(int(np.prod(jnp.shape(r))) for r in r_leaves)
    n = sum(int(np.prod(jnp.shape(v))) for v in x_leaves)
    if not isinstance(jac, (list, tuple, dict)) and jnp.shape(jac) == (m, n):
        return jnp.asarray(jac)
    try:
        rows = []
        for r, sub in zip(r_leaves, r_def.flatten_up_to(jac)):
            blocks = x_def.flatten_up_to(sub)
            rows.append(
                jnp.concatenate(
                    [
                        jnp.reshape(b, (int(np.prod(jnp.shape(r))), int(np.prod(jnp.shape(v)))))
                        for b, v in zip(blocks, x_leaves)
                    ],
                    axis=1,
                )
            )
    except (ValueError, TypeError) as err:
        raise TypeError(
            f"jac must return an {m} x {n} matrix (flattened coordinates) or the pytree "
            f"jax.jacobian gives (residuals' structure over x's): {err}"
        ) from err
    return jnp.concatenate(rows, axis=0)


def active_mask(x: PyTree, box: Box | None, rtol) -> PyTree:
    """-1 / 0 / +1 per coordinate of x (x's structure): on its lower bound, free, on its
    upper bound, within ``max(rtol, 4 eps) * max(1, |bound|)`` (scipy's
    ``find_active_constraints`` with rtol = xtol, floored)."""
    if box is None:
        return jax.tree.map(lambda v: jnp.zeros(jnp.shape(v), jnp.int32), x)

    def leaf(v, lo, hi):
        # scipy's rtol is xtol; floored at 4 ulps, which trf's stop one ulp inside the box
        # can exceed (float32, or xtol=None: rtol 0 would never mark a bound).
        floor = 4 * jnp.finfo(v.dtype).eps
        return find_active_constraints(v, lo, hi, jnp.maximum(jnp.asarray(rtol, v.dtype), floor))

    return jax.tree.map(leaf, x, box.lower, box.upper)


class _LsqCallback(NamedTuple):
    """The user's callback, given scipy's least-squares intermediate result: ``fun`` the
    residuals, ``cost``, ``jac`` the Jacobian, ``grad``. Hashable as the callback is."""

    callback: Callable[[OptimizeResult], Any]

    def __call__(self, intermediate: OptimizeResult) -> Any:
        residuals, J = intermediate.aux
        return self.callback(
            intermediate._replace(
                fun=residuals, jac=J, cost=intermediate.fun, grad=intermediate.jac, aux=None
            )
        )


def _lsq_options(method_options: tuple[Option, ...]) -> tuple[Option, ...]:
    return method_options + (
        Option("ftol", 1e-8, float, low=0.0, allow_none=True),
        Option("xtol", 1e-8, float, low=0.0, allow_none=True),
        Option("gtol", 1e-8, float, low=0.0, allow_none=True),
        Option("max_nfev", None, int, low=1, allow_none=True),
        Option("maxiter", None, int, static=True, low=0, allow_none=True),
        Option("disp", False, bool, static=True),
        Option("progress", False, bool, static=True),
        Option("trace", False, bool, static=True),
        # "matvec": never form the m x n Jacobian (products with it, an iterative solve).
        Option("jac", "dense", str, static=True, choices=("dense", "matvec")),
    )


class _NotGiven:
    """The default of scipy's keywords here: "not given" (``None`` means "off", as in
    scipy, for ftol/xtol/gtol, and "100 n" for max_nfev)."""

    def __repr__(self) -> str:
        return "<not given>"


NOT_GIVEN: Any = _NotGiven()
_UNBOUNDED_ITERATIONS = 2**31 - 2  # maxiter when not set: max_nfev decides


def _x_scale_vector(x_scale: Any, x0: PyTree, n: int) -> jax.Array:
    """``x_scale`` (a scalar, an array over flattened coordinates, or a pytree like x0)
    as a positive vector of length n.

    Raises:
      ValueError: a shape that fits neither, or a value that is not positive and finite.
    """
    flat_dtype = flat_dtype_of(x0)
    leaves = jax.tree.leaves(x0)
    if isinstance(x_scale, tuple) and jax.tree.structure(x_scale) != jax.tree.structure(x0):
        x_scale = list(x_scale)  # scipy's array_like, not a pytree like x0
    if not isinstance(x_scale, (int, float, np.ndarray, jax.Array, list)):  # a pytree
        if jax.tree.structure(x_scale) != jax.tree.structure(x0):
            raise ValueError(
                f"x_scale has structure {jax.tree.structure(x_scale)}, x0 has "
                f"{jax.tree.structure(x0)}: give 'jac', a scalar, an array over the "
                "flattened coordinates, or a pytree with x0's structure."
            )
        scale = ravel(jax.tree.map(lambda s, v: jnp.broadcast_to(s, jnp.shape(v)), x_scale, x0))[0]
    else:
        # NumPy where concrete: no eager JAX operation per call (``tests/test_front_door_cost.py``).
        traced = any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(x_scale))
        xp: Any = jnp if traced else np
        scale = xp.asarray(x_scale, flat_dtype)
        if scale.ndim == 0:
            scale = xp.full((n,), scale)
        if len(leaves) == 1 and scale.shape == jnp.shape(leaves[0]):
            scale = scale.ravel()  # x0 a single array: x_scale of its shape
        if scale.shape != (n,):
            raise ValueError(
                f"x_scale has shape {scale.shape}: give 'jac', a scalar, an array of x0's "
                f"flattened size ({n},), or a pytree with x0's structure."
            )
    scale = scale.astype(flat_dtype)
    if not isinstance(scale, jax.core.Tracer):
        values = np.asarray(scale)
        if not (np.all(np.isfinite(values)) and np.all(values > 0)):
            raise ValueError("x_scale must be positive and finite (or 'jac').")
    return scale


def least_squares(
    fun: Callable[..., PyTree],
    x0: PyTree,
    *,
    args: tuple = (),
    method: str = "trf",
    jac: Callable[..., Any] | None = None,
    bounds: Any = None,
    loss: str | Callable = "linear",
    f_scale: float | jax.Array = 1.0,
    x_scale: Any = None,
    tol: float | None = None,
    options: Mapping[str, Any] | None = None,
    callback: Callable[[OptimizeResult], Any] | None = None,
    ftol: float | None = NOT_GIVEN,
    xtol: float | None = NOT_GIVEN,
    gtol: float | None = NOT_GIVEN,
    max_nfev: int | None = NOT_GIVEN,
) -> OptimizeResult:
    """Solve a nonlinear least-squares problem, scipy-style, in one compiled loop:
    minimize ``0.5 * sum(loss(r_i(x)**2))`` over a pytree x, optionally in a box.

    Args:
      fun: ``fun(x, *args)`` returns the residuals: an array or any pytree of float
        arrays (m residuals in all). JAX-traceable; any callable (as ``minimize``).
      x0: a pytree of floating arrays; ``res.x`` has its structure and dtypes.
      args: a tuple of pytrees passed to ``fun`` (and ``jac``); may be traced, and
        ``res.x`` is differentiable with respect to them (implicitly, at the solution).
      method: ``"trf"`` (trust-region reflective, takes bounds; scipy's default),
        ``"lm"`` (Levenberg-Marquardt as MINPACK's lmder; no bounds, m >= n, linear loss)
        or ``"gauss-newton"`` (with a backtracking line search; no bounds).
      jac: ``None`` (JAX's: ``jax.jacfwd`` when n <= m, else ``jax.jacrev``), or
        ``jac(x, *args)`` giving an m x n matrix on flattened coordinates or the pytree
        ``jax.jacobian`` gives.
      bounds: as ``minimize`` (``(lower, upper)``, scipy's ``Bounds`` or pairs); "trf"
        only. No point outside the box is evaluated (trf's iterates stay inside it).
      loss: ``"linear"``, ``"soft_l1"``, ``"huber"``, ``"cauchy"``, ``"arctan"`` (scipy's),
        or a callable ``loss(z)`` returning ``rho(z)`` and its two derivatives stacked.
      f_scale: the residuals' soft margin for a robust loss (data: may be traced).
      x_scale: ``None`` (1 for trf and gauss-newton, ``"jac"`` for lm, as scipy >= 1.16),
        ``"jac"`` (the Jacobian's column norms, updated), a scalar, an array over the
        flattened coordinates, or a pytree like x0.
      tol: sets ``ftol``, ``xtol`` and ``gtol`` unless given.
      options: ``ftol``, ``xtol``, ``gtol`` (scipy's tests, default 1e-8; None turns one
        off), ``max_nfev`` (default 100 n), ``maxiter`` (accepted steps; default: no
        limit but max_nfev), ``disp``, ``progress``, ``trace``; ``maxls`` for
        gauss-newton (default 20); ``jac``: ``"dense"`` (default) or ``"matvec"``
        (never form the Jacobian: products with one linearization per evaluation and
        conjugate gradients; "trf" without bounds and "gauss-newton"; ``res.jac`` is
        then ``None``).
      callback: ``callback(intermediate_result)`` after every iteration, on the host,
        with ``x``, ``fun`` (the residuals), ``cost``, ``jac``, ``grad``, ``nit`` and
        ``nfev``; ``StopIteration`` stops the solve (``Status.CALLBACK_STOP``).
      ftol, xtol, gtol, max_nfev: scipy's keywords, the same as the options (``None``
        turns a tolerance off, as in scipy; default 1e-8 each, and 100 n evaluations).

    Returns:
      An ``OptimizeResult`` with scipy's least-squares fields: ``x``, ``cost``, ``fun``
      (residuals, fun's structure), ``jac`` (m x n), ``grad`` (x's structure),
      ``optimality`` (the scaled gradient's inf-norm), ``active_mask`` (x's structure),
      ``nit`` (accepted steps), ``nfev`` (evaluations of the residuals and the
      Jacobian, together: ``njev == nfev``), ``status`` (``jd.Status``: scipy's gtol ->
      CONVERGED, ftol -> FTOL, xtol -> XTOL, max_nfev -> MAX_ITER), ``success``.

    Raises:
      TypeError: wrong kinds of input (as ``minimize``; residuals that are not float
        arrays; a jac of the wrong shape; an unknown option).
      ValueError: wrong values (an unknown method or loss, bounds for "lm" or
        "gauss-newton", lower >= upper, "lm" with fewer residuals than variables or a
        robust loss, non-positive f_scale or x_scale).

    Examples:
      >>> import jax.numpy as jnp, jaxopt_dict as jd
      >>> t = jnp.linspace(0.0, 1.0, 20)
      >>> y = 2.0 * jnp.exp(-1.5 * t)
      >>> res = jd.least_squares(lambda p: p["a"] * jnp.exp(-p["k"] * t) - y,
      ...                        {"a": jnp.asarray(1.0), "k": jnp.asarray(1.0)})
      >>> bool(res.success), round(float(res.x["a"]), 6), round(float(res.x["k"]), 6)
      (True, 2.0, 1.5)
    """
    static, x0, args, dynamic, box = prepare_least_squares(
        fun, x0, args, method, jac, bounds, loss, f_scale, x_scale, tol, options, callback,
        {"ftol": ftol, "xtol": xtol, "gtol": gtol, "max_nfev": max_nfev},
    )  # fmt: skip
    res = solve_reporting_errors(static, x0, args, dynamic, box)
    return _least_squares_result(res, box, dynamic)


def prepare_least_squares(
    fun, x0, args, method, jac, bounds, loss, f_scale, x_scale, tol, options, callback, keywords
) -> tuple[SolveStatic, PyTree, tuple, dict, Box | None]:
    """Validate and canonicalize ``least_squares``' inputs before anything is traced:
    ``(static, x0, args, dynamic, box)`` for the driver (``_minimize._solve``)."""
    method_rec = resolve_lsq_method(method)
    x0 = canonicalize_x0(x0)
    check_args(args)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable.")
    if jac is False:
        jac = None
    if jac is True or not (jac is None or callable(jac)):
        raise TypeError(
            "jac must be None (JAX's Jacobian) or a callable jac(x, *args) returning the "
            f"Jacobian; got {jac!r}."
        )
    if not (callable(loss) or loss in LOSSES):
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))} or a callable; "
                         f"got {loss!r}.")  # fmt: skip
    if method_rec.name == "lm" and loss != "linear":
        raise ValueError("method 'lm' supports only loss='linear' (as scipy's).")
    if isinstance(f_scale, (bool, np.bool_)) or np.ndim(f_scale) != 0:
        raise ValueError(f"f_scale must be a positive scalar, got {f_scale!r}.")
    if not isinstance(f_scale, jax.core.Tracer) and not float(f_scale) > 0:
        raise ValueError(f"f_scale must be positive, got {f_scale!r}.")
    box = canonicalize_bounds(scipy_lsq_bounds(bounds, x0), x0)
    if box is not None:
        if not method_rec.supports_bounds:
            raise ValueError(
                f"Method {method_rec.name!r} does not take bounds; 'trf' does (scipy's "
                "least_squares refuses them for 'lm' too)."
            )
        for lo, hi in zip(jax.tree.leaves(box.lower), jax.tree.leaves(box.upper)):
            concrete = not isinstance(lo, jax.core.Tracer) and not isinstance(hi, jax.core.Tracer)
            if concrete and np.any(np.asarray(lo) >= np.asarray(hi)):
                raise ValueError(
                    "Each lower bound must be strictly less than its upper bound "
                    "(least_squares' 'trf' keeps x strictly inside the box)."
                )

    # Options: scipy's keywords, tol, then the options dict (one place each).
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}.")
    options = dict(options or {})
    for name, value in keywords.items():
        if value is not NOT_GIVEN:
            if name in options:
                raise ValueError(f"{name} given both as a keyword and in options.")
            options[name] = value
    if tol is not None:
        for name in ("ftol", "xtol", "gtol"):
            options.setdefault(name, tol)
    specs = _lsq_options(method_rec.options)
    values = resolve_options(method_rec.name, specs, options)
    if values["progress"]:
        require_tqdm()
    for name in ("ftol", "xtol", "gtol"):
        if values[name] is None:  # scipy: None turns the test off
            values[name] = 0.0
    tolerances = [values[name] for name in ("ftol", "xtol", "gtol")]
    if not any(isinstance(t, jax.core.Tracer) for t in tolerances):
        eps = float(np.finfo(float).eps)
        if method_rec.name == "lm" and min(tolerances) < eps:
            raise ValueError(
                f"method 'lm' needs ftol, xtol and gtol >= eps ({eps:.2e}), as scipy's."
            )
        if max(tolerances) < eps:
            raise ValueError(
                f"At least one of ftol, xtol, gtol must be >= eps ({eps:.2e}), as in scipy: "
                "otherwise only max_nfev could end the solve."
            )

    matrix_free = values["jac"] == "matvec"
    if matrix_free:
        refusal = (
            "a jac (products come from JAX's linearization)" if jac is not None
            else "bounds (not yet)" if box is not None
            else "method 'lm' (MINPACK's needs the matrix, as scipy's)"
            if method_rec.name == "lm"
            else "an x_scale other than 1" if x_scale is not None and not (
                np.ndim(x_scale) == 0 and not isinstance(x_scale, str) and float(x_scale) == 1.0)
            else None
        )  # fmt: skip
        if refusal is not None:
            raise ValueError(f"options['jac']='matvec' does not take {refusal}.")
    residuals, args = make_objective(fun, jac, False, args, x0)
    mode = "matvec" if matrix_free else "user" if jac is not None else "fwd"
    weighting = "irls" if method_rec.name == "gauss-newton" else "triggs"
    objective = LsqObjective(residuals, loss, mode, weighting)
    args = (f_scale, *args)
    m, n = objective.shapes(x0, args)
    if callable(loss):
        dtype = jnp.result_type(*jax.tree.leaves(x0))
        refuse_differentiated_closure(
            loss,
            "loss",
            (jnp.zeros((m,), dtype),),
            "Compute that part in fun's residuals, which take args.",
        )
    if mode == "fwd" and n > m:
        objective = objective._replace(jacobian="rev")
    if method_rec.name == "lm" and m < n:
        raise ValueError(
            f"method 'lm' needs at least as many residuals as variables (m = {m} < n = {n}); "
            "use 'trf'."
        )
    if values["max_nfev"] is None:
        values["max_nfev"] = 100 * n
    values["maxfun"] = values.pop("max_nfev")
    if values["maxiter"] is None:
        if values["trace"]:
            if isinstance(values["maxfun"], jax.core.Tracer):
                raise ValueError(
                    "options['trace'] needs options['maxiter'] (or a Python max_nfev)."
                )
            values["maxiter"] = int(values["maxfun"])
        else:
            values["maxiter"] = _UNBOUNDED_ITERATIONS
    if values["trace"] and (values["maxiter"] + 1) * n * 8 > 2**30:
        raise ValueError(
            "options['trace'] would allocate more than 1 GB up front (x for iterations "
            "0..maxiter); lower options['maxiter'], or drop trace."
        )

    if method_rec.name == "gauss-newton" and x_scale is not None:
        raise ValueError(
            "method 'gauss-newton' takes no x_scale: its step (the least-squares solution of "
            "J p = -f) does not depend on the variables' scale."
        )
    if x_scale is None:
        x_scale = "jac" if method_rec.name == "lm" else 1.0
    scale_by_jac = isinstance(x_scale, str)
    if scale_by_jac and x_scale != "jac":
        raise ValueError(f"x_scale must be 'jac', a scalar, an array or a pytree; got {x_scale!r}.")
    x_scale_vector = (
        np.ones((n,), flat_dtype_of(x0)) if scale_by_jac else _x_scale_vector(x_scale, x0, n)
    )

    x0 = x0 if box is None else _strictly_inside(x0, box)
    specs = tuple(s for s in specs if s.name != "max_nfev") + (Option("maxfun", 0, int),)
    static_opts, dynamic = split_static(specs, values)
    static_opts = (*static_opts, ("x_scale_jac", scale_by_jac), ("adjoint", "implicit"))
    dynamic["x_scale"] = x_scale_vector
    wrapped = None if callback is None else _LsqCallback(callback)
    return SolveStatic(method_rec, objective, static_opts, wrapped), x0, args, dynamic, box


@dataclasses.dataclass(frozen=True)
class _FlatBounds:
    """scipy's ``(lb, ub)`` over the flattened coordinates, read as a ``Bounds`` (not a
    tuple: ``minimize``'s reader takes a tuple for ``(lower, upper)`` with x0's structure)."""

    lb: Any
    ub: Any


def scipy_lsq_bounds(bounds: Any, x0: PyTree) -> Any:
    """scipy's ``least_squares`` reads ``bounds=(lb, ub)`` with each side a scalar or an
    array_like over the coordinates, never as ``(lo, hi)`` pairs: a pair of number
    sequences (lists or tuples) is read so here too, as flat ``lb``, ``ub`` over x0's
    flattened coordinates (``minimize`` reads two pairs for two coordinates as pairs,
    as scipy's ``minimize`` does); so is a ``(2, n)`` array, its rows, and a ``(2,)``
    array is ``(lb, ub)`` as two scalars (scipy unpacks any array of length 2 so).
    Anything else is read as ``minimize`` reads it."""
    n = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(x0))
    if isinstance(bounds, (np.ndarray, jax.Array)) and bounds.shape[:1] == (2,):
        if bounds.ndim == 1:
            return (bounds[0], bounds[1])  # two scalars, concrete or traced
        if bounds.shape == (2, n):
            return _FlatBounds(bounds[0], bounds[1])
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        return bounds
    numbers = lambda side: (
        isinstance(side, (tuple, list))
        and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in side)
    )
    if all(numbers(side) and len(side) == n for side in bounds):
        return _FlatBounds(np.asarray(bounds[0], float), np.asarray(bounds[1], float))
    # (A None is the pairs format's "no bound", never scipy least_squares' (lb, ub): such
    # a list is read as minimize reads it, pairs for two coordinates.)
    return bounds


def strictly_inside(x0: PyTree, box: Box | None) -> PyTree:
    """x0 projected onto the box and moved off its bounds (by ``1e-10 * max(1, |bound|)``,
    as scipy's ``trf`` starts, or one ulp where that shift rounds away in x's dtype),
    leaf by leaf in each leaf's dtype; unchanged without a box."""
    if box is None:
        return x0

    def leaf(x, lower, upper):
        # (the start's dependence on the bounds carries no derivative: res.x's is implicit)
        lower = jax.lax.stop_gradient(jnp.asarray(lower, x.dtype))
        upper = jax.lax.stop_gradient(jnp.asarray(upper, x.dtype))
        inside = make_strictly_feasible(jnp.clip(x, lower, upper), lower, upper, 1e-10)
        inside = make_strictly_feasible(inside, lower, upper, 0)
        # (An empty interval, from traced bounds, keeps x0: the solve stops there.)
        return jnp.where(interval_holds_points(lower, upper), inside, x)

    return jax.tree.map(leaf, x0, box.lower, box.upper)


def least_squares_batch(
    fun: Callable[..., PyTree],
    x0: PyTree,
    *,
    args: tuple = (),
    method: str = "trf",
    jac: Callable[..., Any] | None = None,
    bounds: Any = None,
    loss: str | Callable = "linear",
    f_scale: float | jax.Array = 1.0,
    x_scale: Any = None,
    tol: float | None = None,
    options: Mapping[str, Any] | None = None,
    lanes: int | None = None,
    args_axes: int | None | tuple[int | None, ...] = 0,
    ftol: float | None = NOT_GIVEN,
    xtol: float | None = NOT_GIVEN,
    gtol: float | None = NOT_GIVEN,
    max_nfev: int | None = NOT_GIVEN,
) -> OptimizeResult:
    """Many least-squares fits at once, with continuous batching (``minimize_batch``'s
    way): ``lanes`` problems in flight in one compiled loop, a finished lane taking the
    next problem, so throughput follows the mean evaluation count, not the max.

    Args:
      fun, jac, method, bounds, loss, f_scale, x_scale, tol, options: as for
        ``least_squares`` (bounds, f_scale and x_scale shared by all problems; no disp,
        trace or callback).
      ftol, xtol, gtol, max_nfev: as for ``least_squares``.
      x0: a pytree whose every leaf has a leading batch axis of the same length B.
      args: a tuple of pytrees; batched ones (``args_axes``) have the leading axis B.
      lanes: problems in flight at once (default on CPU ``B // 32`` clipped to [32, 64],
        where a few fits that run to ``max_nfev`` would keep wide lanes busy, and
        ``min(B, 256)`` elsewhere; ``_programs.default_lanes``).
      args_axes: per arg, 0 (batched) or ``None`` (shared); one value applies to all.

    Returns:
      ``least_squares``' result with a leading batch axis B on every field; entry i equals
      ``least_squares`` on problem i alone; differentiable in ``args`` like it.

    Examples:
      >>> import jax.numpy as jnp, jaxopt_dict as jd
      >>> t = jnp.linspace(0.0, 1.0, 10)
      >>> rates = jnp.array([0.5, 1.0, 2.0])
      >>> data = jnp.exp(-rates[:, None] * t)
      >>> res = jd.least_squares_batch(lambda k, y: jnp.exp(-k * t) - y,
      ...                              jnp.ones((3, 1)), args=(data,), lanes=2)
      >>> jnp.round(res.x[:, 0], 6).tolist()
      [0.5, 1.0, 2.0]
    """
    long_tail = resolve_lsq_method(method).long_tail
    lanes, args_axes, one_problem = batch_layout(
        x0, args, lanes, args_axes, long_tail, "least_squares_batch"
    )
    if isinstance(options, Mapping) and (options.get("disp") or options.get("trace")):
        raise ValueError(
            "least_squares_batch does not take disp or trace; use jax.vmap(least_squares)."
        )
    static, _, solve_args, dynamic, box = prepare_least_squares(
        fun, take_row(x0, 0), one_problem, method, jac, bounds, loss, f_scale, x_scale, tol,
        options, None, {"ftol": ftol, "xtol": xtol, "gtol": gtol, "max_nfev": max_nfev},
    )  # fmt: skip
    args, args_axes = with_hidden_args(solve_args, one_problem, args, args_axes)
    x0 = jax.vmap(strictly_inside, in_axes=(0, None))(canonicalize_x0(x0), box)
    res = solve_queue((static, lanes, args_axes), x0, args, dynamic, box)
    return jax.vmap(least_squares_result, in_axes=(0, None, None))(res, box, dynamic)


def least_squares_result(res: OptimizeResult, box: Box | None, dynamic: Mapping) -> OptimizeResult:
    """The driver's result (``fun`` = cost, ``jac`` = gradient, ``aux`` = residuals and
    Jacobian) in scipy's least-squares fields."""
    residuals, J = res.aux
    g = res.jac
    if box is None:
        optimality = jnp.max(jnp.abs(ravel(g)[0]), axis=-1)
    else:
        flat = lambda t: ravel(t)[0]
        v = cl_scaling(flat(res.x), flat(g), flat(box.lower), flat(box.upper))[0]
        optimality = jnp.max(jnp.abs(flat(g) * v))
    return res._replace(
        fun=residuals,
        jac=J,
        aux=None,
        cost=res.fun,
        grad=g,
        optimality=optimality,
        active_mask=active_mask(res.x, box, dynamic["xtol"]),
    )


# One dispatch each for what a top-level call computes around its solve (as eager
# operations, one dispatch per operation); inside a user's jit they are inlined.
_strictly_inside = jax.jit(strictly_inside)
_least_squares_result = jax.jit(least_squares_result)


__all__ = ["LOSSES", "LSQ_METHODS", "least_squares", "least_squares_batch"]
