"""``fun`` (and a ``jac`` callable) as any callable (SPEC section 1): hashable or not, and
the arrays it holds are data: new values do not recompile, a mutated array is seen, and
derivatives of ``res.x`` with respect to them are implicit, as for ``args``."""

from __future__ import annotations

import array
import collections
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxopt_dict as jd
from jaxopt_dict._callable import split_callable
from jaxopt_dict._problem import make_objective

A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.5]])  # SPD
TIGHT = {"gtol": 1e-10, "ftol": 0.0}
TRACES = [0]  # how many times ``quad`` was traced


def quad(x, b):
    """0.5 x'Ax - b'x: the minimizer is A^-1 b."""
    TRACES[0] += 1
    return 0.5 * x @ (jnp.asarray(A) @ x) - b @ x


def solution(b):
    return np.linalg.solve(A, np.asarray(b))


class Plain:
    """A plain class: hashable by identity, its array an attribute."""

    def __init__(self, b):
        self.b = b

    def __call__(self, x):
        return quad(x, self.b)

    def loss(self, x):
        return quad(x, self.b)


@dataclasses.dataclass
class Unhashable:
    """eq=True makes a dataclass unhashable."""

    b: Any
    scale: float = 1.0

    def __call__(self, x):
        return self.scale * quad(x, self.b)


@dataclasses.dataclass(frozen=True)
class Frozen:
    """Hashing it hashes the array, which raises (the shape of an equinox Module)."""

    b: Any

    def __call__(self, x):
        return quad(x, self.b)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["b"], meta_fields=["name"])
@dataclasses.dataclass
class Module:
    """A registered pytree: array leaves are data, meta fields static."""

    b: Any
    name: str = "m"

    def __call__(self, x):
        return quad(x, self.b)


@jax.tree_util.register_pytree_node_class
class NodeClass:
    def __init__(self, b):
        self.b = b

    def __call__(self, x):
        return quad(x, self.b)

    def tree_flatten(self):
        return (self.b,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


@dataclasses.dataclass
class Grad:
    """A ``jac`` callable holding its array."""

    b: Any

    def __call__(self, x):
        return jnp.asarray(A) @ x - self.b


MAKERS = {
    "plain": Plain,
    "bound_method": lambda b: Plain(b).loss,
    "unhashable_dataclass": Unhashable,
    "frozen_dataclass": Frozen,
    "register_dataclass": Module,
    "pytree_node_class": NodeClass,
    "partial": lambda b: functools.partial(quad, b=b),
    "partial_numpy": lambda b: functools.partial(quad, b=np.asarray(b)),
    "tree_util_partial": lambda b: jax.tree_util.Partial(quad, b=b),
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_any_callable_solves_and_new_arrays_do_not_recompile(kind):
    make = MAKERS[kind]
    b1, b2 = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.3, 0.7, -1.0])
    res1 = jd.minimize(make(b1), jnp.zeros(3), method="Newton", options=TIGHT)
    traces = TRACES[0]
    res2 = jd.minimize(make(b2), jnp.zeros(3), method="Newton", options=TIGHT)
    assert TRACES[0] == traces, "a new instance with new arrays traced fun again"
    np.testing.assert_allclose(res1.x, solution(b1), rtol=1e-8)
    np.testing.assert_allclose(res2.x, solution(b2), rtol=1e-8)
    assert res1.x.dtype == jnp.float64


def test_a_mutated_array_gives_the_new_answer():
    # Before: ``model`` keyed the compiled program by identity with its array baked in,
    # so the second solve silently returned the first answer.
    model = Plain(jnp.array([1.0, 2.0, 3.0]))
    first = jd.minimize(model, jnp.zeros(3), method="L-BFGS", options=TIGHT)
    model.b = jnp.array([-1.0, -2.0, -3.0])
    second = jd.minimize(model, jnp.zeros(3), method="L-BFGS", options=TIGHT)
    np.testing.assert_allclose(first.x, solution([1.0, 2.0, 3.0]), rtol=1e-8)
    np.testing.assert_allclose(second.x, solution([-1.0, -2.0, -3.0]), rtol=1e-8)


class Target:
    """A plain class holding no array: hashed by identity, its target a float."""

    def __init__(self, c):
        self.c = c
        self.inner = Plain(None)  # a nested plain object, keyed by its attributes too

    def loss(self, x):
        return quad(x, jnp.full(3, self.c))


@pytest.mark.parametrize("bound", [True, False], ids=["bound_method", "partial"])
def test_a_mutated_float_attribute_gives_the_new_answer(bound):
    # Before: an object holding no array was kept whole, keyed by identity, so after
    # ``target.c = -2.0`` the second solve silently returned the first answer (success).
    target = Target(1.0)
    make = (lambda: target.loss) if bound else (lambda: functools.partial(Target.loss, target))
    first = jd.minimize(make(), jnp.zeros(3), method="L-BFGS", options=TIGHT)
    traces = TRACES[0]
    again = jd.minimize(make(), jnp.zeros(3), method="L-BFGS", options=TIGHT)
    assert TRACES[0] == traces, "the same attribute values traced fun again"
    target.c = -2.0
    second = jd.minimize(make(), jnp.zeros(3), method="L-BFGS", options=TIGHT)
    np.testing.assert_allclose(first.x, solution(np.full(3, 1.0)), rtol=1e-8)
    np.testing.assert_allclose(again.x, first.x, rtol=0)
    np.testing.assert_allclose(second.x, solution(np.full(3, -2.0)), rtol=1e-8)
    target.inner.b = 7.0  # a nested object's attribute is part of the key as well
    assert split_callable(make(), "fun")[0] != split_callable(Target(-2.0).loss, "fun")[0]


@dataclasses.dataclass(frozen=True)
class Wrapped:
    """Hashable by value, holding a plain object (as dict_minimize's own wrapper does)."""

    inner: Any

    def __call__(self, x):
        return self.inner.loss(x)


def test_a_plain_object_inside_a_frozen_dataclass_is_keyed_by_its_attributes():
    # The frozen dataclass was kept whole: its hash reaches the plain object by identity,
    # so after target.c = -2.0 the cache returned the first answer.
    target = Target(1.0)
    first = jd.minimize(Wrapped(target), jnp.zeros(3), method="L-BFGS", options=TIGHT)
    target.c = -2.0
    second = jd.minimize(Wrapped(target), jnp.zeros(3), method="L-BFGS", options=TIGHT)
    np.testing.assert_allclose(first.x, solution(np.full(3, 1.0)), rtol=1e-8)
    np.testing.assert_allclose(second.x, solution(np.full(3, -2.0)), rtol=1e-8)


def test_jac_as_a_callable_object_holding_arrays():
    for b in (jnp.array([1.0, -2.0, 0.5]), jnp.array([0.3, 0.7, -1.0])):
        res = jd.minimize(Frozen(b), jnp.zeros(3), method="Newton", jac=Grad(b), options=TIGHT)
        np.testing.assert_allclose(res.x, solution(b), rtol=1e-8)


@pytest.mark.parametrize(
    ("kind", "method"),
    [("plain", "Newton"), ("frozen_dataclass", "L-BFGS"), ("partial", "Newton")],
)
def test_grad_with_respect_to_the_array_fun_holds(kind, method):
    make = MAKERS[kind]

    def total(b):
        return jnp.sum(jd.minimize(make(b), jnp.zeros(3), method=method, options=TIGHT).x)

    b = jnp.array([1.0, -2.0, 0.5])
    # d/db sum(A^-1 b) = A^-1 1 (A symmetric).
    np.testing.assert_allclose(jax.grad(total)(b), np.linalg.solve(A, np.ones(3)), rtol=1e-7)
    eps = 1e-6
    fd = [(total(b + eps * e) - total(b - eps * e)) / (2 * eps) for e in jnp.eye(3)]
    np.testing.assert_allclose(jax.grad(total)(b), fd, rtol=1e-5)


def test_under_jit_and_vmap():
    bs = jnp.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.0]])
    jitted = jax.jit(lambda b: jd.minimize(Plain(b), jnp.zeros(3), method="Newton").x)
    np.testing.assert_allclose(jitted(bs[0]), solution(bs[0]), rtol=1e-8)
    vmapped = jax.vmap(lambda b: jd.minimize(Module(b), jnp.zeros(3), method="Newton").x)
    np.testing.assert_allclose(vmapped(bs), np.stack([solution(b) for b in bs]), rtol=1e-8)


@dataclasses.dataclass
class Shifted:
    """``quad(x, b + c)``: b held (shared by a batch), c a batched arg."""

    b: Any

    def __call__(self, x, c):
        return quad(x, self.b + c)


def test_minimize_batch_shares_the_arrays_fun_holds():
    b = jnp.array([1.0, -2.0, 0.5])
    cs = jnp.array([[0.0, 0.0, 0.0], [0.3, 0.7, -1.0], [1.0, 1.0, 1.0]])
    res = jd.minimize_batch(Shifted(b), jnp.zeros((3, 3)), (cs,), method="Newton", lanes=2)
    np.testing.assert_allclose(res.x, np.stack([solution(b + c) for c in cs]), rtol=1e-8)

    def total(b):
        out = jd.minimize_batch(Shifted(b), jnp.zeros((3, 3)), (cs,), method="Newton", lanes=2)
        return jnp.sum(out.x)

    # Shared by the 3 problems: the derivative sums over them.
    np.testing.assert_allclose(jax.grad(total)(b), 3 * np.linalg.solve(A, np.ones(3)), rtol=1e-7)


def test_has_aux_with_a_callable_holding_arrays():
    @dataclasses.dataclass
    class WithAux:
        b: Any

        def __call__(self, x):
            return quad(x, self.b), {"residual": jnp.asarray(A) @ x - self.b}

    b = jnp.array([1.0, -2.0, 0.5])
    res = jd.minimize(WithAux(b), jnp.zeros(3), method="Newton", has_aux=True, options=TIGHT)
    np.testing.assert_allclose(res.aux["residual"], WithAux(b)(res.x)[1]["residual"], atol=1e-15)
    np.testing.assert_allclose(res.aux["residual"], np.zeros(3), atol=1e-7)


def test_pg_with_a_callable_holding_arrays():
    b = jnp.array([1.0, -2.0, 0.5])
    options = {"physics": lambda x: x, "physics_inv": lambda y: y, "gtol": 1e-10}
    res = jd.minimize(Unhashable(b), jnp.zeros(3), method="PG", options=options)
    np.testing.assert_allclose(res.x, solution(b), rtol=1e-8)


def test_unhashable_callable_without_arrays():
    @dataclasses.dataclass
    class Target:
        t: tuple

        def __call__(self, x):
            return quad(x, jnp.asarray(self.t))

    res = jd.minimize(Target((1.0, -2.0, 0.5)), jnp.zeros(3), method="Newton", options=TIGHT)
    np.testing.assert_allclose(res.x, solution([1.0, -2.0, 0.5]), rtol=1e-8)


def test_plain_functions_are_kept_as_they_are():
    args = (jnp.ones(3),)
    objective, solve_args = make_objective(quad, None, False, args)
    assert objective.fun is quad and solve_args is args and not objective.data_in_args


def test_partials_around_partials_objects_and_subclasses():
    """jax's Partial boxes a functools.partial func (or holds a bound method) in its
    treedef, by identity: a change inside it hit the cached program. A subclass of
    functools.partial with attributes of its own (``__dict__`` or ``__slots__``) keeps
    them and is keyed by them, and one with its own ``__new__`` is rebuilt too."""
    quad_at = lambda x, c: quad(x, jnp.full(3, c))

    def solve(f):
        return jd.minimize(f, jnp.zeros(3), method="L-BFGS", options=TIGHT).x

    inner = functools.partial(quad_at, c=1.0)
    boxed = jax.tree_util.Partial(inner)
    np.testing.assert_allclose(solve(boxed), solution(np.full(3, 1.0)), rtol=1e-8)
    inner.keywords["c"] = 5.0
    np.testing.assert_allclose(solve(boxed), solution(np.full(3, 5.0)), rtol=1e-8)

    class Target:
        c = 1.0

        def loss(self, x):
            return quad_at(x, self.c)

    target = Target()
    bound = jax.tree_util.Partial(target.loss)
    np.testing.assert_allclose(solve(bound), solution(np.full(3, 1.0)), rtol=1e-8)
    target.c = -2.0
    np.testing.assert_allclose(solve(bound), solution(np.full(3, -2.0)), rtol=1e-8)

    class Shifted(functools.partial):
        shift = 0.0

        def __call__(self, x):
            return super().__call__(x - self.shift)

    shifted = Shifted(quad_at, c=1.0)
    shifted.shift = 2.0
    np.testing.assert_allclose(solve(shifted), solution(np.full(3, 1.0)) + 2.0, rtol=1e-8)
    # Its attribute changed, and beside an array keyword: a subclass was kept whole by
    # identity (the old shift's program, with success) or rebuilt without its attributes
    # (shift 0).
    shifted.shift = -1.0
    np.testing.assert_allclose(solve(shifted), solution(np.full(3, 1.0)) - 1.0, rtol=1e-8)
    holding = Shifted(quad, b=jnp.full(3, 1.0))
    holding.shift = 2.0
    np.testing.assert_allclose(solve(holding), solution(np.full(3, 1.0)) + 2.0, rtol=1e-8)

    class Slotted(functools.partial):
        __slots__ = ("shift",)

        def __call__(self, x):
            return super().__call__(x - self.shift)

    slotted = Slotted(quad, b=jnp.full(3, 1.0))
    slotted.shift = 2.0
    np.testing.assert_allclose(solve(slotted), solution(np.full(3, 1.0)) + 2.0, rtol=1e-8)
    slotted.shift = 3.0
    np.testing.assert_allclose(solve(slotted), solution(np.full(3, 1.0)) + 3.0, rtol=1e-8)

    class Centred(functools.partial):  # its own constructor: rebuilt as functools builds it
        def __new__(cls, centre):
            return super().__new__(cls, quad, b=centre)

    np.testing.assert_allclose(
        solve(Centred(jnp.full(3, 4.0))), solution(np.full(3, 4.0)), rtol=1e-8
    )


@pytest.mark.parametrize("kind", [functools.partial, jax.tree_util.Partial])
def test_a_partial_is_keyed_by_what_it_holds(kind):
    """A partial hashes by identity: kept whole, a change to what it holds (its keywords,
    a dict it holds, updated in place) hit the cached program and returned the old
    answer, with success. It is keyed by its func, args and keywords instead, so two
    equal partials also share one program."""
    targets = {"b": 1.0}
    p = kind(lambda x, cfg, scale: scale * quad(x, jnp.full(3, cfg["b"])), cfg=targets, scale=1.0)

    def solve():
        return jd.minimize(p, jnp.zeros(3), method="L-BFGS", options=TIGHT)

    np.testing.assert_allclose(solve().x, solution(np.full(3, 1.0)), rtol=1e-8)
    targets["b"] = 5.0
    np.testing.assert_allclose(solve().x, solution(np.full(3, 5.0)), rtol=1e-8)
    p.keywords["scale"] = 10.0
    p.keywords["cfg"] = {"b": -2.0}
    res = solve()
    np.testing.assert_allclose(res.x, solution(np.full(3, -2.0)), rtol=1e-8)
    np.testing.assert_allclose(res.fun, p(res.x), rtol=1e-12)

    twin = functools.partial(quad, b=(1.0, 2.0, 3.0))
    assert (
        split_callable(twin, "fun")[0]
        == split_callable(functools.partial(quad, b=(1.0, 2.0, 3.0)), "fun")[0]
    )


def test_an_unhashable_static_part_names_fun():
    @dataclasses.dataclass
    class Tagged:
        b: Any
        tags: Any

        def __call__(self, x):
            return quad(x, self.b)

    b = jnp.ones(3)
    buffer = array.array("d", [1.0])  # unhashable, and nothing to key it by
    with pytest.raises(TypeError, match=r"fun\.tags \(a array\) cannot be hashed"):
        jd.minimize(Tagged(b, buffer), jnp.zeros(3), method="L-BFGS")
    with pytest.raises(TypeError, match=r"jac\.tags \(a array\) cannot be hashed"):
        jd.minimize(Plain(b), jnp.zeros(3), method="L-BFGS", jac=Tagged(b, buffer))


class Labelled:
    """Unhashable parts beside an array: a numpy array of strings and a set."""

    def __init__(self, b):
        self.b = b
        self.names = np.array(["u", "v", "w"])
        self.tags = {"plain"}

    def __call__(self, x):
        scale = 2.0 if "doubled" in self.tags else 1.0
        return scale * quad(x, self.b)


def test_unhashable_parts_are_keyed_by_their_content():
    # "Any callable works, hashable or not": a string array or a set beside the arrays
    # was refused ("cannot be hashed"). They key the program by content: a change to
    # the set is seen, an equal one reuses the program.
    model = Labelled(jnp.array([1.0, -2.0, 0.5]))
    first = jd.minimize(model, jnp.zeros(3), method="L-BFGS", options=TIGHT)
    np.testing.assert_allclose(first.x, solution([1.0, -2.0, 0.5]), rtol=1e-8)
    traces = TRACES[0]
    jd.minimize(Labelled(jnp.array([1.0, -2.0, 0.5])), jnp.zeros(3), method="L-BFGS", options=TIGHT)
    assert TRACES[0] == traces, "equal contents traced fun again"
    model.tags.add("doubled")
    second = jd.minimize(model, jnp.zeros(3), method="L-BFGS", options=TIGHT)
    np.testing.assert_allclose(second.fun, 2.0 * first.fun, rtol=1e-10)


class Targets:
    """Its targets a dict, read in insertion order."""

    def __init__(self, targets, sign=1.0):
        self.targets = targets
        self.sign = sign

    def __call__(self, x):
        t = jnp.stack(list(self.targets.values()))
        return jnp.sum((x - math.copysign(1.0, self.sign) * t) ** 2)


def test_a_dict_keeps_its_order_and_a_float_its_sign():
    # Before: the dict was rebuilt in sorted key order (JAX's flattening), so fun read its
    # values in another order and the solve returned [5, 1] for targets [1, 5]; and -0.0
    # keyed the program as 0.0 did, so the second solve returned the first's answer.
    targets = {"b": jnp.asarray(1.0), "a": jnp.asarray(5.0)}
    res = jd.minimize(Targets(targets), jnp.zeros(2), method="L-BFGS", options=TIGHT)
    np.testing.assert_allclose(res.x, [1.0, 5.0], rtol=1e-8)
    plus = jd.minimize(Targets(targets, 0.0), jnp.zeros(2), method="L-BFGS", options=TIGHT)
    minus = jd.minimize(Targets(targets, -0.0), jnp.zeros(2), method="L-BFGS", options=TIGHT)
    np.testing.assert_allclose(plus.x, [1.0, 5.0], rtol=1e-8)
    np.testing.assert_allclose(minus.x, [-1.0, -5.0], rtol=1e-8)
    default = collections.defaultdict(list, targets)
    res = jd.minimize(Targets(default), jnp.zeros(2), method="L-BFGS", options=TIGHT)
    np.testing.assert_allclose(res.x, [1.0, 5.0], rtol=1e-8)
    # Under a derivative too: the identity, not a permutation.
    jac = jax.jacrev(
        lambda t: jd.minimize(Targets({"b": t[0], "a": t[1]}), jnp.zeros(2), options=TIGHT).x
    )(jnp.array([1.0, 5.0]))
    np.testing.assert_allclose(jac, np.eye(2), atol=1e-8)
