"""Each `utils` module can be copied into another project: alone, or with the one `utils` module it names at the top
of its docstring (CONTRIBUTING, "utils conventions"). The training program, `utils/train.py`, is the one documented
exception: it may import several `utils` modules, each named in its docstring."""

import ast
import subprocess
import sys
from pathlib import Path

UTILS = Path(__file__).resolve().parents[1] / "utils"
EXCEPTION = "train"  # the course's training program (CONTRIBUTING says why)


def utils_imports(path: Path) -> set[str]:
    """The `utils` modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "utils":
            if node.module == "utils":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("utils.")}
    return found


MODULES = sorted(p.stem for p in UTILS.glob("*.py") if p.stem != "__init__")


def test_each_module_names_its_one_utils_dependency():
    for name in MODULES:
        path = UTILS / f"{name}.py"
        imports = utils_imports(path)
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert name == EXCEPTION or len(imports) <= 1, f"utils/{name}.py imports {sorted(imports)}: at most one"
        for dependency in imports:
            assert f"utils.{dependency}" in docstring, f"utils/{name}.py does not name utils.{dependency}"


def test_each_module_imports_when_copied_alone_with_its_dependency(tmp_path):
    """Copy every module, with what it names, into its own empty folder and import it there, in one interpreter
    (third-party imports are shared; each copy's `utils` package is fresh and must come from its folder)."""
    for name in MODULES:
        package = tmp_path / name / "utils"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for module in {name} | utils_imports(UTILS / f"{name}.py"):
            (package / f"{module}.py").write_text((UTILS / f"{module}.py").read_text())
    script = f"""
import importlib, sys
for name in {MODULES!r}:
    for loaded in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
        del sys.modules[loaded]
    sys.path.insert(0, {str(tmp_path)!r} + "/" + name)
    module = importlib.import_module("utils." + name)
    assert module.__file__.startswith({str(tmp_path)!r}), module.__file__
    sys.path.pop(0)
    print("imported", name)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("imported") == len(MODULES)
