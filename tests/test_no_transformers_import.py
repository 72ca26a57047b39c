"""Runtime code never imports transformers (nor datasets / huggingface_hub): those are test-only
reference oracles. Checked two ways: statically (every import statement of every runtime .py file,
at any depth, including importlib.import_module / __import__ with a literal name) and dynamically
(importing the runtime modules in a fresh interpreter leaves them out of sys.modules)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"transformers", "datasets", "huggingface_hub", "peft",  # peft: test-only, like transformers
             "selenium", "sklearn", "statsmodels", "scipy"}  # the review tests' browser and references


def runtime_files():
    """The scripts in the repository root and the packages they import (core/, models/);
    not tests/, bench/ or tools/."""
    return sorted(ROOT.glob("*.py")) + sorted((ROOT / "core").glob("*.py")) + sorted((ROOT / "models").glob("*.py"))


def forbidden_imports(source, filename="<string>"):
    """[(line, module)] for every import of a forbidden top-level package in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_scanner_sees_every_import_form():
    src = ("import os\nimport transformers.models as tm\ndef f():\n    from datasets import load_dataset\n"
           "    import importlib; importlib.import_module('huggingface_hub')\nfrom .transformers import x\n"
           "from transformersx import y\n")
    assert forbidden_imports(src) == [(2, "transformers.models"), (4, "datasets"), (5, "huggingface_hub")]


def test_no_runtime_file_imports_transformers():
    files = runtime_files()
    names = {str(p.relative_to(ROOT)) for p in files}
    # the scan really covers them
    assert {"core/common.py", "core/prompt.py", "core/classifier.py", "train_lm.py", "models/hf_io.py", "models/bert.py"} <= names
    bad = {str(p.relative_to(ROOT)): hits for p in files
           if (hits := forbidden_imports(p.read_text(encoding="utf-8"), str(p)))}
    assert not bad, f"runtime code imports test-only packages: {bad}"


def test_importing_runtime_modules_does_not_load_transformers():
    modules = [p.stem for p in sorted(ROOT.glob("*.py"))]
    modules += ["core." + p.stem for p in sorted((ROOT / "core").glob("*.py")) if p.stem != "__init__"]
    modules += ["models." + p.stem for p in sorted((ROOT / "models").glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "import models\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
            "print('loaded:', bad)\n"
            "sys.exit(1 if bad else 0)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "models.hf_io" in modules and "loaded: []" in out.stdout
