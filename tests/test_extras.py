"""A missing optional extra is one line naming what to install, exit code 2, never a traceback (issue 11, case 12).

Each case removes one package (``sys.modules[name] = None``, as if it were not installed) and runs the
command through the real CLI entry point.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scilm._extras import EXTRAS, MissingExtra, optional_extra, require
from scilm.errors import ScilmError

REPO = Path(__file__).resolve().parents[1]
CHEBI = REPO / "tests" / "data" / "textchem" / "chebi20-validation.txt"
KEEP = {"scilm", "scilm.errors", "scilm._extras", "scilm.cli"}  # the runner's own classes must stay the same


@pytest.fixture
def without():
    """``without(name)``: ``name`` cannot be imported, and scilm modules are imported afresh; undone after."""
    saved, removed = dict(sys.modules), []

    def gone(key: str) -> bool:
        return any(key == name or key.startswith(name + ".") for name in removed)

    def remove(name: str) -> None:
        removed.append(name)
        for key in list(sys.modules):
            if (key.startswith("scilm.") and key not in KEEP) or gone(key):
                del sys.modules[key]
        sys.modules[name] = None

    yield remove
    for key in list(sys.modules):  # scilm's fresh copies and the stand-in go; third-party modules first
        if key not in saved and (key.startswith("scilm.") or gone(key)):  # loaded here stay (numpy's C
            del sys.modules[key]                                          # core cannot be loaded twice)
    sys.modules.update(saved)
    for key, module in saved.items():  # and packages point at their saved submodules again
        parent, _, child = key.rpartition(".")
        if key.startswith("scilm.") and saved.get(parent) is not None:
            setattr(saved[parent], child, module)


def one_line(stderr: str, extra: str, module: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        f"error: {module} is not installed; it comes with scilm's optional extra [{extra}]: "
        f"pip install 'scilm[{extra}]'"]


CASES = [
    # (command, package removed, extra named)
    (["data", "textchem", "--out", "{tmp}/tc", "--chebi20", str(CHEBI), "--canonicalize"], "rdkit", "chem"),
    (["generate", "--model", "{tmp}/model", "--task", "retrosynthesis", "CCO"], "rdkit", "chem"),
    (["evaluate", "--model", "{tmp}/model", "--data", "{tmp}/x.jsonl"], "Levenshtein", "chem"),
    (["evaluate", "--model", "{tmp}/model", "--data", "{tmp}/x.jsonl"], "nltk", "chem"),
    (["evaluate", "--model", "{tmp}/model", "--data", "{tmp}/x.jsonl"], "rouge_score", "chem"),
    (["serve", "--model", "{tmp}/model"], "fastapi", "serve"),
    (["serve", "--model", "{tmp}/model"], "prometheus_client", "serve"),
    (["serve", "--model", "{tmp}/model"], "uvicorn", "serve"),
    (["bench", "serve", "--out", "{tmp}/bench", "--quick"], "httpx", "serve"),
]


@pytest.mark.parametrize("args, module, extra", CASES, ids=[f"{c[0][0]}-{c[1]}" for c in CASES])
def test_missing_extra_is_one_line_and_exit_2(run_cli, without, tmp_path, args, module, extra):
    without(module)
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.stderr
    one_line(result.stderr, extra, module)
    assert not (tmp_path / "tc").exists()  # data textchem wrote nothing


def test_library_import_raises_an_import_error_that_names_the_extra(without):
    without("rdkit")
    with pytest.raises(MissingExtra) as caught:
        importlib.import_module("scilm.chem.smiles")
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ScilmError)
    assert caught.value.extra == "chem" and "pip install 'scilm[chem]'" in str(caught.value)


def test_other_import_errors_pass_through(without):
    without("rdkit")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        with optional_extra("chem"):
            import no_such_module_here  # noqa: F401
    with pytest.raises(MissingExtra):
        require("serve", "rdkit")
    with pytest.raises(KeyError, match="unknown extra"):
        with optional_extra("gpu"):
            pass


def test_lightning_example_without_lightning_is_one_line():
    code = ("import runpy, sys; sys.modules['pytorch_lightning'] = None; "
            "runpy.run_path('examples/sifting/lightning.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 2
    one_line(done.stderr, "lightning", "pytorch_lightning")


def test_extras_table_covers_every_package_of_every_extra():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    modules_of: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            modules_of.setdefault(distribution.lower().replace("_", "-"), set()).add(module)
    for extra, requirements in extras.items():
        if extra in ("test", "all"):
            continue
        for requirement in requirements:
            distribution = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            installed = modules_of.get(distribution)
            if installed is None:
                pytest.skip(f"{distribution} is not installed here: cannot read its module names")
            assert installed & set(EXTRAS[extra]), (extra, distribution, installed)


def unwrapped_imports(path: Path) -> list[str]:
    """Imports of an extra's package in ``path`` that are not inside ``with optional_extra(...)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    extra_modules = {m for modules in EXTRAS.values() for m in modules}
    found = []

    def visit(node: ast.AST, wrapped: bool) -> None:
        if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") == "optional_extra"
                for item in node.items):
            wrapped = True
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.partition(".")[0] in extra_modules and not wrapped:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
        for child in ast.iter_child_nodes(node):
            visit(child, wrapped)

    visit(tree, False)
    return found


def test_every_chem_import_site_goes_through_optional_extra():
    # serving/ and its benchmarks (bench/serve*.py) are left to the CLI's catch-all (the serve extra);
    # everything else is wrapped
    sites = [site for path in sorted((REPO / "src" / "scilm").rglob("*.py"))
             if "serving" not in path.parts and not path.name.startswith("serve")
             for site in unwrapped_imports(path)]
    assert sites == []
