"""A user's ``fun`` (or ``jac``) as a hashable skeleton plus the arrays it holds.

The compiled solve is keyed on ``fun`` as a static argument, so ``fun`` must be hashable,
and whatever arrays it holds would be baked into the program as constants: a new value
(``model.w = new_w``) would silently hit the cache with the old one. Here a callable is
split into ``(skeleton, data)``: ``data`` is a tuple of the array leaves it holds (they
travel into the solve as an argument, so new values do not recompile and derivatives
with respect to them are implicit, as for ``args``), and ``skeleton`` is everything else,
hashable and compared by value, which ``rebuild`` turns back into an equivalent callable.

What is looked into (recursively, up to ``_MAX_DEPTH`` levels):

- a registered pytree (``jax.tree_util.Partial``, an equinox-style Module, tuples, dicts):
  flattened one level; array leaves are data, the rest is split again;
- a bound method: its ``__self__``; a ``functools.partial``: its func, args and keywords;
- any other object with a ``__dict__`` (or ``__slots__``) that is not a function, class or
  module (plain classes, dataclasses, frozen ones too): its attributes, rebuilt on a
  ``copy.copy`` with ``object.__setattr__``.

Functions, lambdas and builtins are kept as they are (static, compared by identity), and so
is any part that holds no array and hashes by value (a frozen dataclass, a tuple): it keys
the cache as it is. An object that hashes by identity (a plain class, a ``functools.partial``
or jax's ``Partial``) is keyed by its attributes (a partial: its func, args and keywords)
even when it holds no array: kept whole, ``t.c = 5.0`` between two solves would hit the
cache and return the old answer. (Only if one of its attributes cannot be hashed is it
kept whole, by identity.) A part that cannot be hashed but whose content can (a numpy
array of strings, a set, a bytearray, a deque) is keyed by its content. Arrays inside a
function's closure are not seen (a closure is code, not data): pass them through ``args``
or a partial.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import math
import types
from typing import Any

import jax
import numpy as np

_MAX_DEPTH = 32  # objects nested deeper are kept whole (static)
_MAX_NODES = 10_000  # past this many parts, the rest is kept whole (static)


def _is_array(value: Any) -> bool:
    """Data: a jax array (tracers included) or a numeric numpy array."""
    if isinstance(value, jax.Array):
        return True
    return isinstance(value, np.ndarray) and value.dtype.kind in "biufc"


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except Exception:  # noqa: BLE001 (a hash can raise anything)
        return False
    return True


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """Where one array of ``data`` goes."""


class _Static:
    """A part kept as it is; compared by type and value (functions: by identity)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash((type(self.value), self.value))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static):
            return NotImplemented
        a, b = self.value, other.value
        if a is b:
            return True
        if type(a) is not type(b):
            return False
        if isinstance(a, float):
            # -0.0 == 0.0, but a program that reads the sign (copysign, 1 / c) differs.
            return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
        try:
            return bool(a == b)
        except Exception:  # noqa: BLE001 (an __eq__ can raise anything)
            return False

    def __repr__(self) -> str:
        return f"_Static({self.value!r})"


@dataclasses.dataclass(frozen=True)
class _Content:
    """A part that cannot be hashed but whose content can (a numpy array of strings, a
    set, a bytearray, a deque): compared by its type and that content, rebuilt as itself."""

    kind: type
    key: Any
    value: Any = dataclasses.field(compare=False, hash=False, repr=False)


def _content_key(value: Any) -> Any:
    """A hashable key for the content of an unhashable ``value``, or ``None``."""
    try:
        if isinstance(value, np.ndarray):
            return (value.dtype.str, value.shape, tuple(value.ravel().tolist()))
        if isinstance(value, (set, frozenset)):
            return frozenset(value)
        if isinstance(value, bytearray):
            return bytes(value)
        if isinstance(value, collections.deque):
            return tuple(value)
    except Exception:  # noqa: BLE001 (elements that cannot be hashed or listed)
        return None
    return None


class _ById:
    """A part compared by identity (an object's own dunder attributes, e.g.
    ``__wrapped__``): not split, and hashable whatever it is."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ById) and other.value is self.value


@dataclasses.dataclass(frozen=True)
class _Tree:
    """A registered pytree node: its treedef (one level) and its children."""

    treedef: Any
    children: tuple


@dataclasses.dataclass(frozen=True)
class _Dict:
    """A ``dict`` or ``defaultdict``, its keys in insertion order (JAX's flattening sorts
    them, and a rebuilt dict in sorted order changed what ``list(d.values())`` in ``fun``
    returns). ``factory``: a defaultdict's ``default_factory`` (a node); None for a dict."""

    keys: tuple
    children: tuple
    factory: Any = None


@dataclasses.dataclass(frozen=True)
class _Method:
    """A bound method: ``types.MethodType(func, self)``."""

    func: Any
    self_: Any


@dataclasses.dataclass(frozen=True)
class _Partial:
    """A ``functools.partial`` (or subclass): ``cls(func, *args, **keywords)``, with the
    instance's own attributes set (a subclass's ``self.shift``)."""

    cls: type
    func: Any
    args: tuple
    keywords: tuple  # ((name, node), ...)
    attributes: tuple = ()  # ((name, node), ...)


@dataclasses.dataclass(frozen=True)
class _Object:
    """An object rebuilt as ``copy.copy(template)`` with its attributes set. The template
    is a copy with the split attributes set to None (it holds no data), and is not part of
    the key: two instances of one class with equal non-array attributes share a program."""

    cls: type
    names: tuple[str, ...]
    children: tuple
    template: Any = dataclasses.field(compare=False, hash=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Skeleton:
    """A callable without its arrays; ``rebuild(skeleton, data)`` puts them back."""

    root: Any


class _Splitter:
    """One split: collects the data leaves, and the paths of unhashable static parts."""

    def __init__(self) -> None:
        self.data: list[Any] = []
        self.unhashable: list[tuple[str, Any]] = []
        self.nodes = 0
        self.by_value = 0  # objects hashed by identity, keyed by their attributes instead

    def split(self, value: Any, path: str, depth: int, seen: frozenset) -> Any:
        """The node for ``value``; a part holding no array and hashed by value stays whole."""
        if _is_array(value):
            self.data.append(value)
            return _Leaf()
        self.nodes += 1
        n_data, n_unhashable, n_by_value = len(self.data), len(self.unhashable), self.by_value
        node = None
        within_limits = depth < _MAX_DEPTH and self.nodes < _MAX_NODES
        if within_limits and id(value) not in seen:
            node = self._split_parts(value, path, depth + 1, seen | {id(value)})
        # An object hashed by identity is keyed by its attributes (``_split_object``),
        # arrays or not, and so is what holds one, unless some part cannot be hashed: then
        # by identity, as it hashes.
        by_value = self.by_value > n_by_value and len(self.unhashable) == n_unhashable
        if node is None or len(self.data) == n_data and not by_value:
            if _hashable(value):
                del self.unhashable[n_unhashable:]
                return _Static(value)
            if node is None:
                key = _content_key(value)
                if key is not None and _hashable(key):
                    return _Content(type(value), key, value)
                where = path if within_limits else f"{path} (nested too deep to look into)"
                self.unhashable.append((where, value))
                return _Static(value)
        return node

    def _split_parts(self, value: Any, path: str, depth: int, seen: frozenset) -> Any:
        """``value`` split into parts, or ``None`` if it is kept whole."""
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
            return None
        if isinstance(value, types.ModuleType):
            return None
        # jax's Partial is a pytree whose func sits in its treedef, compared by identity:
        # split as functools' is, its func included.
        tree = None if type(value) in _PARTIALS else self._split_tree(value, path, depth, seen)
        if tree is not None:
            return tree
        if isinstance(value, types.MethodType):
            return _Method(
                self.split(value.__func__, f"{path}.__func__", depth, seen),
                self.split(value.__self__, f"{path}.__self__", depth, seen),
            )
        if isinstance(value, functools.partial):
            func = value.func
            # jax's Partial boxes a functools.partial func in a shim that hashes it by
            # identity; the partial itself is split (the rebuilt Partial boxes it again).
            boxed = getattr(func, "fun", None)
            if type(func).__name__ == "_HashableCallableShim" and isinstance(
                boxed, functools.partial
            ):
                func = boxed
            attributes = [
                (k, v) for k, v in _attributes(value) or () if k not in ("func", "args", "keywords")
            ]
            node = _Partial(
                type(value),
                self.split(func, f"{path}.func", depth, seen),
                tuple(
                    self.split(a, f"{path}.args[{i}]", depth, seen)
                    for i, a in enumerate(value.args)
                ),
                tuple(
                    (k, self.split(v, f"{path}.keywords[{k!r}]", depth, seen))
                    for k, v in value.keywords.items()
                ),
                tuple((k, self.split(v, f"{path}.{k}", depth, seen)) for k, v in attributes),
            )
            # A partial hashes by identity, as a plain object does: kept whole, a change
            # to what it holds (``p.keywords["c"] = 5.0``, a dict it holds updated in
            # place, a subclass's ``p.shift = 2.0``) would hit the cache and return the
            # old answer.
            self.by_value += 1
            return node
        if type(value).__module__.split(".")[0] in ("jax", "jaxlib"):
            return None  # jax's own wrappers (jit, custom_jvp): their attributes are internals
        return self._split_object(value, path, depth, seen)

    def _split_tree(self, value: Any, path: str, depth: int, seen: frozenset) -> Any:
        """A registered pytree node flattened one level, or ``None`` for a leaf."""
        if type(value) in (dict, collections.defaultdict):
            factory = None
            if isinstance(value, collections.defaultdict):
                factory = self.split(value.default_factory, f"{path}.default_factory", depth, seen)
            children = tuple(self.split(v, f"{path}[{k!r}]", depth, seen) for k, v in value.items())
            return _Dict(tuple(value), children, factory)
        first = [True]

        def one_level(node: Any) -> bool:  # the root is flattened, its children are not
            if first:
                first.clear()
                return False
            return True

        try:
            children, treedef = jax.tree_util.tree_flatten_with_path(value, is_leaf=one_level)
        except Exception:  # noqa: BLE001 (a user's flatten can raise anything)
            return None
        if jax.tree_util.treedef_is_leaf(treedef) and len(children) == 1:
            return None
        if not _hashable(treedef):
            self.unhashable.append((f"{path} (its pytree metadata)", treedef))
        return _Tree(
            treedef,
            tuple(
                self.split(child, path + jax.tree_util.keystr(key_path), depth, seen)
                for key_path, child in children
            ),
        )

    def _split_object(self, value: Any, path: str, depth: int, seen: frozenset) -> Any:
        """An object's attributes split (dunder ones kept by identity), or ``None``."""
        attributes = _attributes(value)
        if attributes is None:
            return None
        n_data, n_by_value = len(self.data), self.by_value
        names, children = [], []
        for name, attr in attributes:
            names.append(name)
            if name.startswith("__") and name.endswith("__"):
                children.append(_ById(attr))
            else:
                children.append(self.split(attr, f"{path}.{name}", depth, seen))
        # Kept whole only if nothing in it is keyed by value: a frozen dataclass holding
        # a plain object hashes that object by identity.
        kept_whole = len(self.data) == n_data and self.by_value == n_by_value
        if kept_whole and _hashable(value) and not _hashed_by_identity(value):
            return _Static(value)  # kept whole (``split``): no template needed
        try:
            template = copy.copy(value)
            for name in names:
                object.__setattr__(template, name, None)
        except Exception:  # noqa: BLE001 (copying a user's object can raise anything)
            return None
        if len(self.data) == n_data:
            self.by_value += 1
        return _Object(type(value), tuple(names), tuple(children), template)


_PARTIALS = (functools.partial, jax.tree_util.Partial)  # rebuilt by their constructors


def _hashed_by_identity(value: Any) -> bool:
    """``value`` hashes as ``object`` does, by identity: kept whole, the cache would miss
    a change to its attributes (``t.c = 5.0``) and return the old program's answer."""
    return type(value).__hash__ is object.__hash__


def _attributes(value: Any) -> list[tuple[str, Any]] | None:
    """``value``'s instance attributes (``__dict__``, then ``__slots__``), or ``None``."""
    attributes = []
    if hasattr(value, "__dict__"):
        try:
            attributes = list(vars(value).items())
        except TypeError:
            return None
    slots = []
    for cls in type(value).__mro__:
        own = cls.__dict__.get("__slots__", ())
        slots.extend([own] if isinstance(own, str) else own)
    for name in slots:
        if name not in ("__dict__", "__weakref__") and hasattr(value, name):
            attributes.append((name, getattr(value, name)))
    if not attributes and not hasattr(value, "__dict__"):
        return None
    return attributes


def _rebuild_node(node: Any, leaves: Any) -> Any:
    if isinstance(node, _Leaf):
        return next(leaves)
    if isinstance(node, (_Static, _ById, _Content)):
        return node.value
    if isinstance(node, _Dict):
        plain = node.factory is None
        factory = None if plain else _rebuild_node(node.factory, leaves)  # split first
        items = {key: _rebuild_node(child, leaves) for key, child in zip(node.keys, node.children)}
        return items if plain else collections.defaultdict(factory, items)
    if isinstance(node, _Tree):
        children = [_rebuild_node(child, leaves) for child in node.children]
        return jax.tree_util.tree_unflatten(node.treedef, children)
    if isinstance(node, _Method):
        return types.MethodType(_rebuild_node(node.func, leaves), _rebuild_node(node.self_, leaves))
    if isinstance(node, _Partial):
        func = _rebuild_node(node.func, leaves)
        args = [_rebuild_node(a, leaves) for a in node.args]
        keywords = {k: _rebuild_node(v, leaves) for k, v in node.keywords}
        # jax's Partial boxes its func in its own constructor; a subclass of functools'
        # is built as functools builds it (its own ``__new__``/``__init__`` may take
        # other arguments), then given its attributes back.
        if node.cls in _PARTIALS:
            obj = node.cls(func, *args, **keywords)
        else:
            obj = functools.partial.__new__(node.cls, func, *args, **keywords)
        for name, child in node.attributes:
            object.__setattr__(obj, name, _rebuild_node(child, leaves))
        return obj
    obj = copy.copy(node.template)
    for name, child in zip(node.names, node.children):
        object.__setattr__(obj, name, _rebuild_node(child, leaves))
    return obj


def rebuild(skeleton: Any, data: tuple) -> Any:
    """The callable ``skeleton`` stands for, holding ``data`` (arrays or tracers);
    anything that is not a ``Skeleton`` (a callable kept whole, None, True) as it is."""
    if not isinstance(skeleton, Skeleton):
        return skeleton
    leaves = iter(data)
    return _rebuild_node(skeleton.root, leaves)


def split_callable(obj: Any, name: str) -> tuple[Any, tuple]:
    """``(skeleton, data)`` for the callable ``obj`` (``name``: "fun" or "jac", for errors).

    ``data`` is a tuple of the arrays ``obj`` holds (dtypes kept); ``skeleton`` is hashable
    and compares by value. A callable holding no array that is hashable comes back as
    itself with ``data == ()``.

    Raises:
      TypeError: a part of ``obj`` that is not an array could not be hashed (the message
        names it), or ``obj`` could not be rebuilt from its parts.
    """
    splitter = _Splitter()
    root = splitter.split(obj, name, 0, frozenset())
    if isinstance(root, _Static) and not splitter.unhashable:
        return obj, ()
    if splitter.unhashable:
        path, part = splitter.unhashable[0]
        raise TypeError(
            f"{name} cannot be used: {path} (a {type(part).__name__}) cannot be hashed. The "
            f"compiled solve is keyed on everything {name} holds except arrays (arrays are "
            "data, traced like args), so the rest must be hashable: make that part hashable "
            "(a tuple, a frozenset, a frozen dataclass), hold it as an array, or pass it "
            "through args."
        )
    skeleton = Skeleton(root)
    data = tuple(splitter.data)
    try:
        rebuild(skeleton, data)
    except Exception as err:
        raise TypeError(
            f"{name} ({type(obj).__name__}) holds arrays but could not be rebuilt from its "
            f"parts ({type(err).__name__}: {err}); pass the arrays through args instead."
        ) from err
    return skeleton, data


__all__ = ["Skeleton", "rebuild", "split_callable"]
