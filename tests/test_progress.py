"""Long work shows something useful (issue 20): ``disp`` under ``jax.vmap`` labels each line
with the problem's index, the callback under vmap sees each problem's own result, and
``options={"progress": True}`` shows a tqdm bar for ``minimize`` (iterations of maxiter)
and ``minimize_batch`` (problems finished of B)."""

from __future__ import annotations

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd
from jaxopt_dict import _progress
from jaxopt_dict._result import status_message

COEFS = jnp.array([0.0, 1.0, 3.0])  # converge in 2, 6 and 6 L-BFGS iterations


def quartic(x, c):
    return jnp.sum((x - 1.0) ** 2) + c * jnp.sum(x**4)


def solve(c, **kwargs):
    return jd.minimize(quartic, jnp.zeros(2), args=(c,), method="L-BFGS", **kwargs)


# "problem 3  iter     12  f = ..." or "problem 3       Converged: ..." (the final line).
_LABELLED = re.compile(r"^problem\s+(\d+)  (?:iter\s+(\d+)  f = |     (\S.*))")


def printed(capsys, run, *args):
    capsys.readouterr()
    res = run(*args)
    jax.effects_barrier()
    return res, capsys.readouterr()


def by_problem(lines: list[str]) -> dict[int, list[tuple[int | None, str | None]]]:
    """Each problem's lines in order: (iteration, None) or (None, final message)."""
    seen: dict[int, list] = {}
    for line in lines:
        match = _LABELLED.match(line)
        assert match, f"unlabelled line under vmap: {line!r}"
        k, it, message = match.groups()
        seen.setdefault(int(k), []).append((None if it is None else int(it), message))
    return seen


def assert_reports(seen, res, n_problems):
    """Each problem: iterations 0..nit, then one final line with its own status, then
    nothing (a finished problem stops printing while the others go on)."""
    nit, status = np.ravel(res.nit), np.ravel(res.status)
    success = np.ravel(res.success)
    assert sorted(seen) == list(range(n_problems))
    for k, lines in seen.items():
        iters = [it for it, _ in lines[:-1]]
        assert iters == list(range(int(nit[k]) + 1)), (k, lines)
        assert lines[-1][1] == status_message(int(status[k]), bool(success[k])), (k, lines)
        assert sum(m is not None for _, m in lines) == 1


def test_disp_under_vmap_labels_each_line_and_finished_problems_stop_printing(capsys):
    run = jax.jit(jax.vmap(lambda c: solve(c, options={"disp": True})))
    res, out = printed(capsys, run, COEFS)
    lines = [line for line in out.out.splitlines() if line.strip()]
    assert len(set(np.asarray(res.nit).tolist())) > 1  # problem 0 finishes first
    assert_reports(by_problem(lines), res, 3)
    # Problem 0 ends at iteration 2; later lines are all the others'.
    end_0 = next(i for i, line in enumerate(lines) if re.match(r"problem 0\s+Converged", line))
    assert not [line for line in lines[end_0 + 1 :] if line.startswith("problem 0 ")]
    # Each problem's lines say what its solve alone says, less the label.
    for k, c in enumerate(COEFS):
        _, alone = printed(capsys, lambda c: solve(c, options={"disp": True}), c)
        solo = [line for line in alone.out.splitlines() if line.strip()]
        mine = [line[len(f"problem {k}  ") :] for line in lines if line.startswith(f"problem {k} ")]
        assert [line.split("f =")[0] for line in mine] == [line.split("f =")[0] for line in solo]
        assert mine[-1] == solo[-1]  # the final message


def test_disp_under_nested_vmap_flattens_the_batch_dimensions(capsys):
    coefs = jnp.array([[0.0, 1.0], [3.0, 0.5]])
    run = jax.vmap(jax.vmap(lambda c: solve(c, options={"disp": True})))
    res, out = printed(capsys, run, coefs)
    lines = [line for line in out.out.splitlines() if line.strip()]
    # Problem k is entry k of the results in C order.
    assert_reports(by_problem(lines), res, 4)


def test_disp_unbatched_has_no_label(capsys):
    res, out = printed(capsys, lambda c: solve(c, options={"disp": True}), 1.0)
    lines = out.out.splitlines()
    assert lines[0].startswith("iter      0  f = ")
    assert len(lines) == int(res.nit) + 2 and not [line for line in lines if "problem" in line]
    assert lines[-1] == f"     {jd.Status.CONVERGED.message}"


def test_callback_under_vmap_gets_each_problems_own_results():
    seen: list = []

    def callback(intermediate_result):
        seen.append(intermediate_result)

    res = jax.jit(jax.vmap(lambda c: solve(c, callback=callback)))(COEFS)
    jax.effects_barrier()
    assert len(seen) == int(np.sum(res.nit))  # once per problem per iteration
    for r in seen:
        assert np.shape(r.x) == (2,) and np.shape(r.nit) == () and np.shape(r.fun) == ()
    # Each problem's last report is its result (per-problem x, f and nit).
    for k in range(3):
        last = [r for r in seen if int(r.nit) == int(res.nit[k])]
        assert any(np.array_equal(np.asarray(r.x), np.asarray(res.x[k])) for r in last), k


def test_stop_iteration_under_vmap_stops_only_that_problem():
    def callback(intermediate_result):
        # Problem 2 (c = 3) alone has f > 0.8 at iteration 2.
        if int(intermediate_result.nit) >= 2 and float(intermediate_result.fun) > 0.8:
            raise StopIteration

    res = jax.jit(jax.vmap(lambda c: solve(c, callback=callback)))(COEFS)
    alone = [solve(c) for c in COEFS]
    assert [int(s) for s in res.status] == [
        int(alone[0].status),
        int(alone[1].status),
        jd.Status.CALLBACK_STOP,
    ]
    assert [int(n) for n in res.nit] == [int(alone[0].nit), int(alone[1].nit), 2]
    np.testing.assert_allclose(res.x[1], alone[1].x, rtol=1e-12)


def test_stop_iteration_under_vmap_prints_the_callback_stop_line(capsys):
    def callback(intermediate_result):
        if int(intermediate_result.nit) >= 2 and float(intermediate_result.fun) > 0.8:
            raise StopIteration

    run = jax.vmap(lambda c: solve(c, callback=callback, options={"disp": True}))
    res, out = printed(capsys, run, COEFS)
    seen = by_problem([line for line in out.out.splitlines() if line.strip()])
    assert_reports(seen, res, 3)
    assert seen[2][-1][1] == jd.Status.CALLBACK_STOP.message


# ---------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------


def final_bar(err: str) -> str:
    """The bar as last drawn (tqdm redraws in place with carriage returns)."""
    return [part for part in re.split(r"[\r\n]", err) if part.strip()][-1]


def test_progress_bar_for_a_single_solve(capsys):
    res, out = printed(capsys, lambda c: solve(c, options={"progress": True, "maxiter": 50}), 3.0)
    bar = final_bar(out.err)
    assert f" {int(res.nit)}/50 " in bar, out.err
    assert "f=" in bar and "|pg|_inf=" in bar, bar
    assert out.out == ""  # the bar alone, on stderr


def test_progress_bar_under_jit_counts_each_run(capsys):
    run = jax.jit(lambda c: solve(c, options={"progress": True, "maxiter": 50}))
    for c in (1.0, 0.0):  # one compiled program, two runs: two bars
        res, out = printed(capsys, run, c)
        assert f" {int(res.nit)}/50 " in final_bar(out.err), out.err


def test_progress_bar_under_vmap_is_one_bar_of_the_slowest_problem(capsys):
    run = jax.vmap(lambda c: solve(c, options={"progress": True, "maxiter": 50}))
    res, out = printed(capsys, run, COEFS)
    assert out.err.count("/50 [") >= 1
    bar = final_bar(out.err)
    assert f" {int(np.max(res.nit))}/50 " in bar, out.err
    assert "running 0/3" in bar, bar


def test_progress_bar_for_minimize_batch_counts_problems(capsys):
    cs = jnp.linspace(0.0, 3.0, 12)

    def run(cs):
        return jd.minimize_batch(
            quartic, jnp.zeros((12, 2)), args=(cs,), method="L-BFGS", lanes=4,
            options={"progress": True},
        )  # fmt: skip

    res, out = printed(capsys, run, cs)
    assert bool(np.all(res.success))
    assert " 12/12 " in final_bar(out.err), out.err


def test_no_host_callback_in_minimize_batch_without_progress():
    def program(progress):
        def run(cs):
            return jd.minimize_batch(
                quartic, jnp.zeros((4, 2)), args=(cs,), method="L-BFGS", lanes=2,
                options={"progress": progress},
            )  # fmt: skip

        return str(jax.make_jaxpr(run)(jnp.ones(4)))

    assert "callback" not in program(False)
    assert "callback" in program(True)


def test_progress_redraws_at_most_a_few_times_a_second(capsys):
    bar = _progress.Bar(unit="it")
    capsys.readouterr()
    bar.open(10_000)
    for n in range(10_000):  # far faster than REFRESH_SECONDS apart
        bar.show(n)
    bar.show(10_000, close=True)
    err = capsys.readouterr().err
    assert err.count("\r") <= 4, err  # open, maybe one redraw, the final state
    assert "10000/10000" in final_bar(err)


def test_progress_without_tqdm_is_refused_at_the_front_door(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    with pytest.raises(ImportError, match="pip install tqdm"):
        solve(1.0, options={"progress": True})
    with pytest.raises(ImportError, match="pip install tqdm"):
        jd.minimize_batch(
            quartic, jnp.zeros((3, 2)), args=(COEFS,), options={"progress": True}
        )  # fmt: skip
    assert bool(solve(1.0).success)  # without progress, tqdm is not needed


def test_progress_is_refused_with_the_unrolled_adjoint():
    with pytest.raises(ValueError, match="progress"):
        solve(1.0, options={"progress": True, "adjoint": "unrolled"})


def test_progress_must_be_a_bool():
    with pytest.raises(ValueError, match="progress"):
        solve(1.0, options={"progress": "yes"})
