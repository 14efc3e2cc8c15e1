"""Nothing under kernels/ may import skystack, Dask, astropy or any I/O library: the hot
loops stay plain arrays in, plain arrays out (STYLE.md section 1). Checked by parsing
every file's imports, so a lazy import inside a function is caught too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "kernels" / "_skystack_kernels"
# top-level modules a kernel may import (``types``: the GPU twins rebuild functions);
# relative imports (within _skystack_kernels) are fine
ALLOWED = {"__future__", "math", "numpy", "numba", "types"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            found.append((node.lineno, "__import__"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module"):
            found.append((node.lineno, "importlib.import_module"))
    return found


FILES = sorted(KERNELS.rglob("*.py"))


def test_kernel_files_exist():
    names = {p.relative_to(KERNELS).as_posix() for p in FILES}
    assert {"codes.py", "cpu/combine.py", "cpu/reject.py", "gpu/combine.py", "gpu/warp.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(KERNELS).as_posix())
def test_kernel_imports_only_numpy_numba_math(path):
    bad = [(line, name) for line, name in _imports(path) if name.split(".")[0] not in ALLOWED]
    assert not bad, f"{path.relative_to(KERNELS)} imports {bad}; kernels may import only {sorted(ALLOWED)}"


def test_the_checker_catches_forbidden_imports(tmp_path):
    f = tmp_path / "k.py"
    f.write_text("import numpy as np\nfrom numba import njit\n\ndef f():\n    import dask.array\n"
                 "    from astropy.io import fits\n    from skystack import api\n")
    names = [name for _, name in _imports(f)]
    assert [n for n in names if n.split(".")[0] not in ALLOWED] == ["dask.array", "astropy.io", "skystack"]
