"""Package metadata and optional dependencies (fast, static checks).

The end-to-end check, a fresh virtual environment with only torch where `leo demo --quick` must run
on the declared dependencies alone, is `make install-check` (CI runs it).
"""
import ast
import importlib.metadata
import pathlib
import re
import sys

import pytest

from leo.train import common

REPO = pathlib.Path(__file__).resolve().parents[1]
# Imported but deliberately not declared: torch is installed first by the user (declaring it could
# pull a second, CUDA, torch); triton is the `triton` extra; nvtx is used only when present.
NOT_DECLARED = {"torch", "triton", "nvtx"}


def _imported_top_level_modules() -> set[str]:
    names = set()
    for package in ("leo", "leo_kernels"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"leo", "leo_kernels", "__future__"}


def _declared_dependencies() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}


def test_every_third_party_import_is_declared():
    declared = _declared_dependencies()
    dists_of = importlib.metadata.packages_distributions()  # import name -> distributions
    missing = {}
    for module in sorted(_imported_top_level_modules() - NOT_DECLARED):
        dists = {d.lower() for d in dists_of.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"imported in leo/ or leo_kernels/ but not in pyproject.toml dependencies: {missing}"


def test_torch_is_not_a_declared_dependency():
    tomllib = pytest.importorskip("tomllib")
    text = (REPO / "pyproject.toml").read_text()
    data = tomllib.loads(text)
    every = data["project"]["dependencies"] + sum(data["project"]["optional-dependencies"].values(), [])
    every += data["build-system"]["requires"]
    assert not [d for d in every if re.match(r"torch\b", d)], "torch in metadata would let pip fetch a second torch"


def test_plots_are_skipped_with_a_notice_without_matplotlib(tmp_path, monkeypatch, capsys):
    csv = tmp_path / "metrics.csv"
    csv.write_text("step,loss\n1,0.5\n2,0.4\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    monkeypatch.setattr(common, "_PLOT_NOTICE_SHOWN", False)
    assert common.plot_losses(csv, tmp_path / "loss.png") is False
    assert common.plot_losses(csv, tmp_path / "loss.png") is False
    assert not (tmp_path / "loss.png").exists()
    notice = capsys.readouterr().err
    assert notice.count("matplotlib is not installed") == 1 and notice.count("\n") == 1
