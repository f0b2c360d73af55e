"""What a top-level ``minimize`` / ``least_squares`` call costs besides its compiled
program: no eager JAX operation once the program is compiled.

Each eager operation is a dispatch of its own (about 30-80 us on CPU); building the box
of a bounded solve with ``jnp`` took about 0.6 ms per call, more than a small solve
(2-D Rosenbrock: 0.2 ms), and converting the numeric options took 0.1 ms. Time is not
asserted here (shared machines): the count of eager operations is, which is exact.
(The spy sees primitives run eagerly; a ``jnp`` function that is itself jitted, called
eagerly after its first call, runs from JAX's C++ cache and is not seen.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import core  # the eval trace: where an eager operation runs

import jaxopt_dict as jd


def rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def residuals(x, t, y):
    return x[0] * jnp.exp(x[1] * t) - y


def eager_operations(call) -> list[str]:
    """The primitives ``call()`` runs eagerly (outside any compiled program)."""
    seen: list[str] = []
    original = core.EvalTrace.process_primitive

    def spy(self, primitive, *args, **kwargs):
        seen.append(primitive.name)
        return original(self, primitive, *args, **kwargs)

    core.EvalTrace.process_primitive = spy
    try:
        call()
    finally:
        core.EvalTrace.process_primitive = original
    return seen


def test_the_spy_sees_eager_operations():
    assert eager_operations(lambda: jnp.full(2, 0.8)) != []


X0 = jnp.array([-1.2, 1.0])
BOUNDS = {
    "none": None,
    "jax arrays": (jnp.full(2, -2.0), jnp.full(2, 0.8)),
    "scalars": (-2.0, 0.8),
    "one side": (None, 0.8),
    "scipy pairs": [(-2, 0.8), (None, 1.5)],
    "float32 x, inexact bound": (-2.0, 0.1),
}


@pytest.mark.parametrize("name", list(BOUNDS))
def test_minimize_runs_no_eager_operation_once_compiled(name):
    x0 = X0.astype(jnp.float32) if "float32" in name else X0
    solve = lambda: jd.minimize(rosen, x0, bounds=BOUNDS[name], options={"maxiter": 5})
    jax.block_until_ready(solve().x)  # compiles
    assert eager_operations(solve) == []


LSQ_CASES = {
    "unbounded": {},
    "bounded": {"bounds": ([0.0, -5.0], [5.0, 0.0])},
    "x_scale array, soft_l1": {"x_scale": np.array([1.0, 2.0]), "loss": "soft_l1"},
    "lm": {"method": "lm"},
}


@pytest.mark.parametrize("name", list(LSQ_CASES))
def test_least_squares_runs_no_eager_operation_once_compiled(name):
    t = np.linspace(0.0, 1.0, 8)
    y = 2.0 * np.exp(-1.5 * t)
    x0 = jnp.array([1.0, -1.0])
    solve = lambda: jd.least_squares(residuals, x0, args=(t, y), **LSQ_CASES[name])
    jax.block_until_ready(solve().x)
    assert eager_operations(solve) == []


def test_a_passed_check_is_not_reused_for_other_input_types():
    """The front door remembers the checks of ``fun`` that passed (per objective and input
    types): a new shape is checked again, and a failed check fails every time."""

    def fun(x):
        return x * x  # a scalar only for a scalar x

    scalar, vector = jnp.asarray(3.0), jnp.array([3.0, 1.0])
    assert jd.minimize(fun, scalar).success
    for _ in range(2):
        with pytest.raises(TypeError, match="must return a scalar"):
            jd.minimize(fun, vector)
    assert eager_operations(lambda: jd.minimize(fun, scalar)) == []
