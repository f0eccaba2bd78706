"""egosynth's modules import each other one way only (issue 16, "a house whose data flows one
way"): the internal import graph has no cycle, and the lower layers (label table, scene
geometry, NeRF bundles and the nerfstudio adapter) never reach the renderer, which never
reaches the tools that render (captures, previews, NeRF fit, import, bake and checks).

Every import counts, wherever it stands (module level, inside functions, under
`if TYPE_CHECKING:`), so a lazy import cannot hide a circle. `from egosynth.a import b` where b
is a submodule is a dependency on egosynth.a.b; a dependency on a package is one on its
__init__. Importing a submodule is not counted as a dependency on its parent packages (a
package __init__ that lazily imports its own submodules, like egosynth.render's factory, is
the usual facade, not a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "egosynth"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `root` (packages by __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` means: itself, else its longest prefix that is a module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The egosynth modules `module` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.append(sub if sub in modules else base)
        else:  # importlib.import_module (cli's command table) is not followed
            continue
        for name in names:
            if name == "egosynth" or name.startswith("egosynth."):
                target = _target(name, modules)
                if target is not None and target != module:
                    deps.add(target)
    return deps


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the egosynth modules it imports."""
    modules = module_files(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules of every import circle: each strongly connected component of more than one
    module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def cycle_through(comp: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest import chain from a circle's first module back to itself: [a, b, ..., a]."""
    members, start = set(comp), comp[0]
    prev = {start: start}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    chain = [v]
                    while chain[-1] != start:
                        chain.append(prev[chain[-1]])
                    return [*reversed(chain), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{comp} is not a circle")


def path_to(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A shortest import chain start -> ... -> a module in package `goal` (or None)."""
    prev: dict[str, str] = {start: start}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w in prev:
                    continue
                prev[w] = v
                if w == goal or w.startswith(goal + "."):
                    chain = [w]
                    while chain[-1] != start:
                        chain.append(prev[chain[-1]])
                    return chain[::-1]
                nxt.append(w)
        frontier = nxt
    return None


# Layers of the one-way data flow (no cycle is necessary, not sufficient): what each lower
# module must never reach, directly or through the modules it imports.
BELOW = {
    # the label table and the scene geometry/generator: built outside the renderer
    "egosynth.labels": "egosynth",  # imports nothing of egosynth at all
    "egosynth.scenes.mesh": "egosynth.render",
    "egosynth.scenes.procedural": "egosynth.render",
    "egosynth.scenes.shapes": "egosynth.render",
    "egosynth.scenes.textures": "egosynth.render",
    # what the NeRF backend is built from: bundle, bake and the nerfstudio adapter
    "egosynth.nerf.bundle": "egosynth.render",
    "egosynth.nerf.baked": "egosynth.render",
    "egosynth.nerf.nerfstudio": "egosynth.render",
    # importing a run needs nerfstudio's config reader, never the renderer (fit, bake and check
    # are scene tooling above the renderer: fit renders its capture with the mesh backend)
    "egosynth.nerf.importer": "egosynth.render",
    # the ClickMe twin reads a store (and the generator's diagnostic-part table), never renders
    "egosynth.eval.twin": "egosynth.render",
}

# Scene tooling that renders (captures, previews, NeRF fitting, import, bake and checks): it sits
# above the renderer, so nothing in egosynth.render may reach it.
ABOVE_RENDER = (
    "egosynth.scenes.capture",
    "egosynth.scenes.preview",
    "egosynth.nerf.fit",
    "egosynth.nerf.importer",
    "egosynth.nerf.bake",
    "egosynth.nerf.check",
)


def test_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The parser counts function-level, TYPE_CHECKING, relative and submodule imports."""
    pkg = tmp_path / "egosynth"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from . import y\n    from .. import c\n")
    (pkg / "a" / "y.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import egosynth.b\n"
    )
    (pkg / "b.py").write_text("from egosynth.a import x\nfrom egosynth import a\n")
    (pkg / "c.py").write_text("import egosynth.a.y.nothing  # the longest prefix that exists\n")
    graph = import_graph(pkg)
    assert graph["egosynth.a.x"] == {"egosynth.a.y", "egosynth.c"}
    assert graph["egosynth.a.y"] == {"egosynth.b"}
    assert graph["egosynth.b"] == {"egosynth.a.x", "egosynth.a"}
    assert graph["egosynth.c"] == {"egosynth.a.y"}
    assert circles(graph) == [["egosynth.a.x", "egosynth.a.y", "egosynth.b", "egosynth.c"]]
    chain = cycle_through(circles(graph)[0], graph)
    assert chain == ["egosynth.a.x", "egosynth.a.y", "egosynth.b", "egosynth.a.x"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50, "egosynth's modules were not found"
    found = circles(graph)
    assert not found, (
        "import circles among egosynth's modules (each: its modules, one chain):\n"
        + ("\n".join(f"{', '.join(c)}\n    {' -> '.join(cycle_through(c, graph))}" for c in found))
    )


def test_lower_layers_never_import_upper_ones() -> None:
    graph = import_graph()
    bad = []
    for module, forbidden in BELOW.items():
        assert module in graph, module
        chain = path_to(graph, module, forbidden)
        if chain:
            bad.append(f"{module} must not import {forbidden}: " + " -> ".join(chain))
    renderer = [m for m in graph if m == "egosynth.render" or m.startswith("egosynth.render.")]
    for module in renderer:
        for tool in ABOVE_RENDER:
            assert tool in graph, tool
            chain = path_to(graph, module, tool)
            if chain:
                bad.append(f"{module} must not import {tool}: " + " -> ".join(chain))
    assert not bad, "\n".join(bad)


MAX_MODULE_LINES = 620  # "no file over ~600 lines": past this, split the module by concept


def test_no_module_is_too_long_to_read() -> None:
    pkg = Path(__file__).resolve().parents[1] / "egosynth"
    long = {
        str(p.relative_to(pkg)): n
        for p in pkg.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
