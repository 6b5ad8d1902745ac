"""``edgead build-c OUT``: build libedgead (the C runtime, ``runtimes/c``) with CMake and collect it in ``OUT``.

``OUT`` receives ``libedgead.so`` (with its ``.so.1`` SONAME link), ``edgead.h`` and, when the source tree has
them, ``edgead_example`` (and ``test_edgead`` on request). OpenVINO is found from the installed ``openvino``
wheel, whose ``libs/`` folder the library keeps as its run-time search path; TensorRT is added when CMake finds
its headers and libraries. The build runs in a temporary folder and ``OUT`` is replaced only once it succeeded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgead import __version__
from edgead.errors import EdgeadError
from edgead.fsutil import atomic_dir, check_output_target

BUILD_TYPES = ("Release", "Debug", "RelWithDebInfo", "MinSizeRel")
MARKER = ".edgead-build-c.json"


def c_source_dir() -> Path:
    """``runtimes/c`` (CMakeLists.txt, edgead.h and the sources) of this edgead install."""
    spec = importlib.util.find_spec("edgead.runtimes")
    if spec is None or not spec.submodule_search_locations:
        raise EdgeadError("expected the edgead.runtimes package, found none; reinstall edgead")
    return Path(next(iter(spec.submodule_search_locations))) / "c"


def openvino_cmake_dir() -> Path | None:
    """The CMake package folder shipped inside the ``openvino`` wheel, or None when it is not installed."""
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        cmake_dir = Path(location) / "cmake"
        if (cmake_dir / "OpenVINOConfig.cmake").is_file():
            return cmake_dir
    return None


def _tool(names: tuple[str, ...], what: str, fix: str) -> str:
    for name in names:
        if name and (path := shutil.which(name)):
            return path
    raise EdgeadError(f"expected {what} to build libedgead, found none on PATH; {fix}")


def _run(cmd: list[str], step: str, cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        detail = (errors or lines or ["no output"])[0]
        raise EdgeadError(f"libedgead {step} failed (exit {proc.returncode}): {detail}")


def build_c(out_dir: str | Path, build_type: str = "Release", sanitize: bool = False,
            with_tests: bool = False) -> Path:
    """Build libedgead and put the library, header and programs in ``out_dir``; return ``out_dir``.

    ``sanitize`` builds with AddressSanitizer/UBSan; note that OpenVINO's TBB loads a library with RTLD_DEEPBIND,
    which ASan refuses, so a sanitised build cannot open OpenVINO artifacts (use valgrind with
    ``tests/c/valgrind.supp`` there). ``with_tests`` also builds the C test program ``test_edgead``.
    """
    out_dir = Path(out_dir)
    if build_type not in BUILD_TYPES:
        raise EdgeadError(f"build type must be one of {', '.join(BUILD_TYPES)}, found '{build_type}'")
    cmake = _tool(("cmake",), "cmake", "install it (apt-get install cmake, or pip install cmake)")
    _tool((os.environ.get("CC", ""), "cc", "gcc", "clang"), "a C compiler (cc, gcc or clang)",
          "install one (apt-get install gcc) or set CC")
    check_output_target(out_dir)  # the one rule for every writer (atomic_dir applies it again at the swap)
    source = c_source_dir()
    root = source.parent.parent
    have_example = (root / "examples" / "c" / "example.c").is_file()
    if with_tests and not (root / "tests" / "c" / "test_edgead.c").is_file():
        raise EdgeadError(f"expected the C test program at {root / 'tests/c/test_edgead.c'}, found none; build "
                          f"tests from an edgead source checkout")
    args = [
        f"-DCMAKE_BUILD_TYPE={build_type}", f"-DEDGEAD_VERSION={__version__}", f"-DEDGEAD_SOURCE_ROOT={root}",
        f"-DEDGEAD_BUILD_EXAMPLES={'ON' if have_example else 'OFF'}",
        f"-DEDGEAD_BUILD_TESTS={'ON' if with_tests else 'OFF'}", f"-DEDGEAD_SANITIZE={'ON' if sanitize else 'OFF'}",
    ]
    ov_dir = openvino_cmake_dir()
    if ov_dir is not None:
        args.append(f"-DOpenVINO_DIR={ov_dir}")
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    with tempfile.TemporaryDirectory(prefix="edgead-build-c-") as tmp:
        build, stage = Path(tmp) / "build", Path(tmp) / "stage"
        _run([cmake, "-S", str(source), "-B", str(build), *args], "configure (cmake)", Path(tmp))
        _run([cmake, "--build", str(build), "--parallel", str(os.cpu_count() or 1)], "build", Path(tmp))
        _run([cmake, "--install", str(build), "--prefix", str(stage)], "install", Path(tmp))
        with atomic_dir(out_dir) as dst:
            for path in sorted(stage.rglob("*")):
                if path.is_symlink() or path.is_file():
                    shutil.copy2(path, dst / path.name, follow_symlinks=False)
            if not (dst / "libedgead.so").exists() or not (dst / "edgead.h").is_file():
                raise EdgeadError(f"expected libedgead.so and edgead.h from the build, found {sorted(os.listdir(dst))}")
            info = {"edgead_version": __version__, "build_type": build_type, "sanitize": sanitize,
                    "openvino_cmake": str(ov_dir) if ov_dir else None}
            (dst / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            dst.chmod(0o755)  # mkdtemp made it private; the result is meant to be shared like any build output
    return out_dir
