"""The package's layers (docs/INTERNALS.md): no module imports from a layer above its own, and no two modules
import each other, directly or around a loop -- imports inside functions included."""

import ast
from pathlib import Path

import motionmae

SRC = Path(motionmae.__file__).parent

# bottom to top; a module may import its own layer and the ones below
LAYERS = [
    {"errors", "version", "progress", "files", "config"},
    {"data"},
    {"objective"},
    {"models"},
    {"runtime"},
    {"viz"},
    {"engine"},
    {"eval", "interop"},
    {"demo", "presets", "recipes", "cli", "__init__"},
]


def _part(module: str) -> str:
    """motionmae.engine.trainer -> engine; motionmae.viz -> viz; motionmae -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if _part(module) in names)


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """{module: {imported motionmae modules}} from every import statement, wherever it stands."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from motionmae.x import y`: y may be a module of package x
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t.startswith("motionmae") and t in modules and t != name}
        graph[name] = deps
    return graph


def test_every_module_is_in_a_layer():
    assert all(_layer(m) is not None for m in import_graph())


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps if _layer(d) > _layer(m)]
    assert upward == []


def test_no_import_cycles():
    graph = import_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_graph_is_read():
    graph = import_graph()
    assert "motionmae.runtime.checkpoint" in graph["motionmae.engine.trainer"]
    assert "motionmae.objective.hog" in graph["motionmae.objective.targets"]
    assert "motionmae.eval.features" in graph["motionmae"]  # an import inside a function counts
