"""Every Python snippet of the docs site (``docs/**/*.md``) runs.

Convention: each fenced ```` ```python ```` block of a page is
executed, in page order, in one namespace per page (a later block may use what an earlier
one defined, as a reader following the page would). Two kinds of block are left out:

- a block that needs a library that is not installed: one that imports a peer library
  (jaxopt, optimistix, dict_minimize, equinox), the migration guides' "before" code, or
  one whose first line says ``# requires: tqdm`` (an optional dependency). Installed, it
  runs too (scipy always is, with jax), so the side-by-side code is checked wherever the
  peers are there (``benchmarks/README.md`` installs them);
- a block after the line ``<!-- docs-test: skip (reason) -->`` (a blank line between, so
  Markdown ends the comment there): code that cannot run in this process, e.g. several
  hosts with ``jax.distributed``.

Blocks of other languages (```` ```bash ````, ```` ```text ````) are never run. Each page
starts as a reader's fresh process does, with ``jax_enable_x64`` off: a page that needs
float64 turns it on in its own first block, as a reader would (restored after the page).
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import textwrap

import jax
import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
PEERS = ("jaxopt", "optimistix", "dict_minimize", "equinox", "lineax")
SKIP_MARK = re.compile(r"^\s*<!--\s*docs-test:\s*skip\b.*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
IMPORT = re.compile(r"^\s*(?:from|import)\s+(?P<module>[\w.]+)", re.MULTILINE)
REQUIRES = re.compile(r"^#\s*requires:\s*(?P<modules>[\w, ]+)")


def blocks(page: pathlib.Path) -> list[tuple[int, str, bool]]:
    """``(line, code, marked_skip)`` for each ```python block of ``page``, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match["indent"], match["fence"], match["lang"]
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        start, i = i + 1, i + 1
        while i < len(lines) and not (
            lines[i].startswith(indent)
            and lines[i].strip().startswith(fence)
            and lines[i].strip().strip(fence[0]) == ""
        ):
            i += 1
        if lang == "python":
            code = textwrap.dedent("\n".join(lines[start:i]))
            found.append((start + 1, code, bool(SKIP_MARK.match(previous))))
        i += 1
    return found


def missing_peer(code: str) -> str | None:
    """The first peer library the code imports, or optional library its first line says
    it requires, that is not installed, if any."""
    needed = [m.split(".")[0] for m in IMPORT.findall(code) if m.split(".")[0] in PEERS]
    requires = REQUIRES.match(code)
    if requires:
        needed += [m.strip() for m in requires["modules"].split(",") if m.strip()]
    return next((m for m in needed if importlib.util.find_spec(m) is None), None)


@pytest.fixture
def fresh_process_state():
    """x64 off, as in a fresh process, for one page; afterwards the previous setting and
    the method registry as they were (a page may register a method of its own)."""
    from jaxopt_dict.methods import _REGISTRY

    previous, registry = jax.config.jax_enable_x64, dict(_REGISTRY)
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", previous)
    _REGISTRY.clear()
    _REGISTRY.update(registry)


def test_the_pages_have_snippets():
    counts = {p.relative_to(DOCS).as_posix(): len(blocks(p)) for p in PAGES}
    assert sum(counts.values()) >= 40, counts


@pytest.mark.usefixtures("fresh_process_state")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_snippets_run(page: pathlib.Path):
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    skipped = []
    for line, code, marked in blocks(page):
        where = f"{page.relative_to(DOCS.parent)}:{line}"
        peer = missing_peer(code)
        if marked or peer:
            skipped.append(f"{where} ({'marked' if marked else peer + ' not installed'})")
            continue
        try:
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 (the docs' own code)
        except Exception as err:
            raise AssertionError(f"the snippet at {where} failed:\n{code}") from err
    if skipped:
        print("not run:", *skipped, sep="\n  ")


def test_methods_page_option_table_matches_the_option_specs():
    """docs/methods.md's "Options at a glance" table says what ``option_specs`` says."""
    import math

    import jaxopt_dict as jd
    from jaxopt_dict.methods import resolve_method

    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    table = text.split("## Options at a glance", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    header = next(line for line in table.splitlines() if line.startswith("| option"))
    methods = [cell.strip() for cell in header.strip("|").split("|")][1:]
    assert sorted(methods) == sorted(jd.method_names())
    documented = set()
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        name, structural = cells[0].split("`")[1], cells[0].endswith("(s)")
        documented.add(name)
        for method, cell in zip(methods, cells[1:]):
            specs = {s.name: s for s in jd.option_specs(resolve_method(method))}
            if cell == "—":
                assert name not in specs, (name, method)
                continue
            spec = specs[name]
            assert spec.static == structural, (name, method, "structural?")
            if cell == "off":
                assert isinstance(spec.default, float) and math.isnan(spec.default), (name, method)
            elif cell.strip("`") == "None":
                assert spec.default is None, (name, method, spec.default)
            else:
                assert float(cell.strip("`")) == pytest.approx(spec.default, rel=1e-4), (
                    name,
                    method,
                )
    # The rest are named in the sentence above the table: "Every method also takes ...".
    sentence = table[table.index("Every method also takes") :].split(".")[0]
    named = set(re.findall(r"`(\w+)`\s+\(", sentence))
    every = {s.name for m in methods for s in jd.option_specs(resolve_method(m))}
    assert every - documented == named, (every - documented, named)
