"""repr(res) is an aligned key/value table, as scipy prints its OptimizeResult."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxopt_dict as jd
from jaxopt_dict import OptimizeResult, Status, Trace


def _result(x, fun=0.5, status=Status.CONVERGED, success=True, nit=7, **extra):
    jac = jax.tree.map(lambda v: 1e-6 * np.ones_like(v), x)
    return OptimizeResult(
        x=x,
        fun=np.float64(fun),
        jac=jac,
        nit=np.int32(nit),
        nfev=np.int32(9),
        njev=np.int32(9),
        status=np.int32(status),
        success=np.bool_(success),
        **extra,
    )


def _keys(text):
    """The top-level keys: the lines whose colon is in the first line's column."""
    lines = text.splitlines()
    col = lines[0].index(": ")
    return [
        line[:col].strip() for line in lines if line[:col].strip() and line[col:].startswith(": ")
    ]


def test_scipy_order_right_aligned_keys_and_message_first():
    res = _result(np.array([1.0, 2.0]))
    text = repr(res)
    assert _keys(text) == ["message", "success", "status", "fun", "x", "nit", "jac", "nfev", "njev"]
    # Keys right-aligned, one blank before the longest: every key line's colon in one column.
    key_lines = [line for line in text.splitlines() if not line.startswith("   " * 3)]
    assert {line.index(": ") for line in key_lines} == {len(" message")}
    lines = text.splitlines()
    assert lines[0] == " message: " + Status.CONVERGED.message
    assert "success: True" in text
    assert "status: 0 (CONVERGED)" in text
    assert "fun: 0.5" in text
    assert "x: [ 1.000e+00  2.000e+00]" in text
    assert "nit: 7" in text
    assert str(res) == text


def test_trace_and_aux_only_when_present():
    x = np.array([1.0, 2.0])
    assert "trace" not in repr(_result(x)) and "aux" not in repr(_result(x))
    trace = Trace(fun=np.array([3.0, 1.0, 0.5]), x=np.stack([x, x, x]))
    text = repr(_result(x, trace=trace, aux={"residual": np.array([0.25])}))
    assert _keys(text)[-2:] == ["trace", "aux"]
    assert "trace: fun: [ 3.000e+00  1.000e+00  5.000e-01]" in text
    assert "aux: residual: [ 2.500e-01]" in text


def test_pytree_leaves_labelled_and_continuation_lines_aligned():
    x = {"head": np.arange(4.0), "tail": {"w": np.ones((2, 3)), "b": np.float32(2.5)}}
    text = repr(_result(x))
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("       x: "))
    block = lines[start : start + 5]
    assert block[0] == "       x:   head: [ 0.000e+00  1.000e+00  2.000e+00  3.000e+00]"
    assert block[1] == "          tail/b: 2.5"
    assert block[2] == "          tail/w: [[ 1.000e+00  1.000e+00  1.000e+00]"
    assert block[3] == "                   [ 1.000e+00  1.000e+00  1.000e+00]]"
    assert block[4].startswith("     nit: ")


def test_large_arrays_are_summarized_within_the_line_width():
    x = np.linspace(0.0, 1.0, 10_000)
    text = repr(_result(x, trace=Trace(fun=np.zeros(15_001), x=np.zeros((15_001, 10_000)))))
    assert "x: [ 0.000e+00  1.000e-04 ...  9.999e-01  1.000e+00]" in text
    assert len(text.splitlines()) < 25
    assert max(len(line) for line in text.splitlines()) <= 80


def test_stall_running_and_nonfinite_values():
    stalled = repr(_result(np.array([1.0]), status=Status.XTOL, success=False))
    assert "stall" in stalled.splitlines()[0] and "status: 5 (XTOL)" in stalled
    running = repr(_result(np.array([1.0]), status=-1, success=False))
    assert running.splitlines()[0] == " message: Iterating." and "-1 (RUNNING)" in running
    nonfinite = repr(_result(np.array([np.nan, np.inf, -np.inf]), fun=np.nan))
    assert "x: [       nan        inf       -inf]" in nonfinite and "fun: nan" in nonfinite


def test_a_batch_counts_messages_and_successes():
    n = 1000
    status = np.zeros(n, np.int32)
    status[[3, 500]] = Status.MAX_ITER
    res = OptimizeResult(
        x=np.zeros((n, 2)),
        fun=np.zeros(n),
        jac=np.zeros((n, 2)),
        nit=np.full(n, 5, np.int32),
        nfev=np.full(n, 6, np.int32),
        njev=np.full(n, 6, np.int32),
        status=status,
        success=status == 0,
    )
    lines = repr(res).splitlines()
    assert lines[0] == f" message: 998 of 1000: {Status.CONVERGED.message}"
    assert lines[1] == f"          2 of 1000: {Status.MAX_ITER.message}"
    assert lines[2] == " success: 998 of 1000: [ True  True ...  True  True]"
    assert lines[3] == "  status: [0 0 ... 0 0]"
    assert len(lines) < 20


def test_a_real_solve_and_a_vmapped_one_print_as_tables():
    def fun(x, c):
        return jnp.sum((x["a"] - c) ** 2) + jnp.sum(x["b"] ** 2)

    x0 = {"a": jnp.zeros(3), "b": jnp.ones((2, 2))}
    res = jd.minimize(fun, x0, (1.0,), "L-BFGS")
    text = repr(res)
    assert _keys(text)[:5] == ["message", "success", "status", "fun", "x"]
    assert "x: a: [ 1.000e+00  1.000e+00  1.000e+00]" in text
    batch = jax.vmap(lambda c: jd.minimize(fun, x0, (c,), "L-BFGS"))(jnp.arange(4.0))
    assert repr(batch).startswith(" message: 4 of 4: ")
    assert "success: 4 of 4: [ True  True  True  True]" in repr(batch)


def test_repr_under_jit_does_not_fail():
    seen = []

    @jax.jit
    def solve(x0):
        res = jd.minimize(lambda x: jnp.sum((x - 1.0) ** 2), x0, method="GD")
        seen.append(repr(res))
        return res.x

    solve(jnp.zeros(2))
    # No message (the status is not known yet); the fields show as what they are.
    assert _keys(seen[0])[0] == "success" and "Trace" in seen[0].splitlines()[0]
