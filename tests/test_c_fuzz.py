"""libedgead's fuzz targets (tests/c/fuzz): the seed corpus and the crash inputs of issue 10 replayed under
AddressSanitizer + UBSan with any C compiler, on every test run. The libFuzzer run itself (bounded, clang) is
``make fuzz``, which ``make test`` runs too.

Regression inputs: ``predict_row_stride_*`` made the old overflow guard overflow (a wild memcpy, a division by
zero); ``manifest_fifo`` / ``manifest_dev_zero`` hung the old reader forever; ``manifest_symlink_escape`` and
``manifest_nul_name`` name files the reader must refuse.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "c" / "fuzz"
SRC = ROOT / "runtimes" / "c"
CC = os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang") or shutil.which("cc")

pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler (apt-get install gcc)")


def _build(target: str, out: Path) -> Path:
    from edgead import __version__

    exe = out / f"replay_{target}"
    cmd = [CC, "-g", "-O1", "-std=c11", "-D_GNU_SOURCE", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=undefined", f"-I{SRC}", f'-DEDGEAD_VERSION_STRING="{__version__}"',
           "-DEDGEAD_TEST_BACKEND=edgead_harness_backend", "-DCJSON_NESTING_LIMIT=64",
           *(str(SRC / f) for f in ("edgead_api.c", "edgead_manifest.c", "edgead_sha256.c",
                                   "edgead_tiling.c", "third_party/cjson/cJSON.c")),
           str(FUZZ / "harness_backend.c"), str(FUZZ / f"fuzz_{target}.c"), str(FUZZ / "standalone.c"),
           "-o", str(exe), "-lm", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "asan" in proc.stderr.lower():
        pytest.skip(f"{CC} cannot link AddressSanitizer here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return exe


@pytest.mark.parametrize("target", ["manifest", "predict"])
def test_corpus_and_crash_inputs_replay_clean(tmp_path: Path, target: str):
    exe = _build(target, tmp_path)
    inputs = sorted((FUZZ / "corpus" / target).iterdir()) + sorted((FUZZ / "regressions").glob(f"{target}_*"))
    assert len(inputs) >= 5
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1"}
    proc = subprocess.run([str(exe), *map(str, inputs)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"replayed {len(inputs)} inputs" in proc.stdout
