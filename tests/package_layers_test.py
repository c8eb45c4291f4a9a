"""The package's import graph: imports go only downward through the layers, and nothing cycles.

Layer order (lowest first; a module may import its own package and any lower layer, never a
sibling package of the same layer or a higher one):

    0  longctx_jax (root), typing
    1  sharding, atomic (crash-safe writes), losses (next-token NLL), config_cli (the
       launchers' command line), cpu (the machine's CPU: model, ISA flags, caches),
       provenance (when and from which commit a result was measured)
    2  positional, data
    3  attention
    4  parallel
    5  models
    6  train, eval
    7  search
    8  bench (the benchmarks the experiments/bench_*.py launchers run)

`experiments/` and `configs/` sit above the package; the package never imports them. Imports
inside functions count: a cycle hidden in a function is still a cycle.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "longctx_jax"
LAYERS: dict[str, int] = {
    "": 0, "typing": 0,
    "sharding": 1, "atomic": 1, "losses": 1, "config_cli": 1,
    "cpu": 1, "provenance": 1,
    "positional": 2, "data": 2,
    "attention": 3,
    "parallel": 4,
    "models": 5,
    "train": 6, "eval": 6,
    "search": 7,
    "bench": 8,
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """Every project module `path` imports, at any depth of the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import sub` imports module pkg.sub when that is a module, else pkg.
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [sub if sub in modules else node.module for sub in subs]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in (PACKAGE, "experiments", "configs")}
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_every_package_has_a_layer():
    assert {_package(m) for m in _modules()} <= set(LAYERS), "add new packages to LAYERS"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Edges that break the layer order."""
    violations = []
    for module, imported in graph.items():
        for target in imported:
            if target.split(".")[0] != PACKAGE:
                violations.append(f"{module} imports {target} (the package never imports launchers/configs)")
                continue
            src, dst = _package(module), _package(target)
            if src != dst and (LAYERS[dst] > LAYERS[src] or (LAYERS[dst] == LAYERS[src] and dst)):
                violations.append(f"{module} (layer {LAYERS[src]}) imports {target} (layer {LAYERS[dst]})")
    return sorted(violations)


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every back edge of a depth-first walk, as the loop it closes."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_imports_go_only_downward():
    violations = upward_imports(_graph())
    assert not violations, "\n".join(violations)


def test_no_import_cycles():
    modules = _modules()
    cycles = import_cycles({m: {t for t in ts if t in modules} for m, ts in _graph().items()})
    assert not cycles, "\n".join(cycles)


def test_the_checkers_catch_what_they_guard_against(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from longctx_jax.train import step\n    import experiments.train\n")
    modules = {"longctx_jax.train.step": source}
    graph = {"longctx_jax.models.x": _imports(source, modules)}
    assert graph["longctx_jax.models.x"] == {"longctx_jax.train.step", "experiments.train"}
    assert len(upward_imports(graph)) == 2
    assert upward_imports({"longctx_jax.eval.a": {"longctx_jax.train.b"}})  # siblings
    assert not upward_imports({"longctx_jax.train.a": {"longctx_jax.models.b", "longctx_jax.train.c"}})
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert not import_cycles({"a": {"b"}, "b": {"c"}, "c": set()})
