"""The layout is the architecture: layers import one way only, no import cycle, short functions in
the training core. Read from the source (ast), so a wrong import fails here before it tangles."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import scilm

ROOT = Path(scilm.__file__).parent
# lower layers first; a module may import its own layer or any layer before it, never one after
LAYERS = [
    {"errors", "io", "distributed", "_extras"},
    {"chem"},
    {"data"},
    {"models"},
    {"sifting"},
    {"training", "inference"},
    {"evaluation"},
    {"serving"},
    {"bench"},
    {"cli", "__main__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}
KNOWN_EXCEPTIONS = {("chem", "data")}  # chem.evaluate reads Text+Chem examples (to move with issue 15's merge)
TRAINING_CORE_MAX_LINES = 60


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: (None if path.name == "__init__.py" else -1)]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "scilm"}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def _sources():
    return [(path, _module(path)) for path in sorted(ROOT.rglob("*.py"))]


def test_layers_import_one_way_only():
    wrong = []
    for path, module in _sources():
        for target in _imports(path, module, top_level_only=False):
            mine, theirs = _layer(module), _layer(target)
            if theirs == "scilm" or mine == theirs or (mine, theirs) in KNOWN_EXCEPTIONS:
                continue
            if LEVEL[theirs] > LEVEL[mine]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    modules = {module for _, module in _sources()}
    graph = defaultdict(set)
    for path, module in _sources():
        for target in _imports(path, module, top_level_only=True):
            while target and target not in modules:  # `from a.b import c`: c may be a name in a.b
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_function_over_60_lines_in_the_training_core():
    long = []
    for path in sorted((ROOT / "training").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > TRAINING_CORE_MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


@pytest.mark.slow  # imports every module (torch, transformers, lightning, rdkit, fastapi ...)
def test_every_public_function_and_class_has_a_docstring():
    """Public functions, classes and their public methods (a method overriding a documented one
    inherits its docstring, as ``inspect.getdoc`` reads it)."""
    import importlib
    import inspect
    import pkgutil

    missing = []
    for info in pkgutil.walk_packages(scilm.__path__, "scilm."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for attribute, member in vars(obj).items():
                    member = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if attribute.startswith("_") or not inspect.isfunction(member):
                        continue
                    if not inspect.getdoc(getattr(obj, attribute)) and not inspect.getdoc(member):
                        missing.append(f"{module.__name__}.{name}.{attribute}")
    assert not missing, "\n".join(missing)
