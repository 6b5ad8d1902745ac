"""The wheel as a user gets it: built from this tree, installed non-editable into a fresh virtual environment.

Every test elsewhere runs the editable install, which finds modules in the source tree whatever pyproject lists;
a subpackage missing from the package list (issue 10: ``edgead.importers``) only shows here. The fresh venv gets
edgead from the wheel alone; its third-party dependencies come from the test environment's site-packages through a
``.pth`` line (no download, and the same versions), with PyTorch, timm and safetensors made unimportable to show
that the line side needs none of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK_TORCH = '''import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "safetensors", "torchvision"):
            raise ImportError(f"{name} is blocked: the line side must not need it")
        return None
sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--wheel-dir", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("edgead-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    env = tmp_path_factory.mktemp("venv") / "v"
    venv.EnvBuilder(with_pip=False).create(env)
    py = env / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # every site-packages folder of this interpreter (an overlay venv has several); .pth lines add them to
    # sys.path without running their own .pth files, so the editable edgead finder of the test env stays off.
    deps = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    (site / "zz_deps_from_test_env.pth").write_text("\n".join(deps or [sysconfig.get_path("purelib")]) + "\n")
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    return env


def test_wheel_holds_every_module_of_the_source_tree(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    mapping = {"edgead": "edgead", "export": "edgead/export", "runtimes": "edgead/runtimes",
               "calib": "edgead/calib", "bench": "edgead/bench"}
    missing = [f"{dst}/{p.relative_to(ROOT / src)}" for src, dst in mapping.items()
               for p in (ROOT / src).rglob("*.py") if "__pycache__" not in p.parts
               and f"{dst}/{p.relative_to(ROOT / src)}" not in names]
    assert missing == []
    assert {"edgead/importers/__init__.py", "edgead/py.typed", "edgead/runtimes/c/edgead.h"} <= names


def test_installed_wheel_runs_import_help_and_a_line_side_predict(fresh: Path, tiny_export, tiny_synthetic,
                                                                   tmp_path: Path):
    py, cli = fresh / "bin" / "python", fresh / "bin" / "edgead"
    probe = "import edgead, importlib.util as u; assert u.find_spec('edgead.importers'); print(edgead.__file__)"
    run = {"capture_output": True, "text": True, "cwd": tmp_path}  # not the source tree's folder: no '' import
    where = subprocess.run([str(py), "-c", probe], timeout=120, **run)
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().startswith(str(fresh)), where.stdout  # the wheel's copy, not the source tree
    blocked = subprocess.run([str(py), "-c", "import torch"], timeout=60, **run)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr
    out = subprocess.run([str(cli), "import", "--help"], timeout=120, **run)
    assert out.returncode == 0 and "--format" in out.stdout, out.stderr[-2000:]
    # The build-side command itself, without torch: one line naming the extra (not a traceback).
    out = subprocess.run([str(cli), "import", str(tmp_path / "x.pth"), "-f", "timm", "-o", str(tmp_path / "o")],
                         timeout=120, **run)
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "edgead[torch]" in out.stderr
    assert "Traceback" not in out.stderr
    images = tiny_synthetic / "test" / "good"
    out = subprocess.run([str(cli), "predict", str(tiny_export("fbft") / "export"), str(images), "--json"],
                         timeout=300, **run)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)["results"]
    assert len(rows) == 4 and all(r["score"] > 0 for r in rows)
