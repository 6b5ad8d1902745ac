"""The tests see one fixed CPU (``conftest.TEST_CPU``) whatever machine runs them, and nothing reads the real one.

CI machines change between runs (AMX, AVX-512 VNNI/BF16, AVX2 only); a test that read the host's flags to decide
what it asserts passed on one and failed on another (issue 25, item 10).
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import TEST_CPU

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("edgead", "runtimes", "export", "calib", "bench")
# Ways to learn the host CPU's instruction sets without going through edgead.bench.machine._cpuinfo.
HOST_READERS = re.compile(r"/proc/cpuinfo|get_cpu_capability|OPTIMIZATION_CAPABILITIES|cpuinfo\.get_cpu_info"
                          r"|platform\.processor\(\)\s*[=!]=|\bcpuid\b")


def test_machine_info_reports_the_pinned_test_cpu():
    from edgead.bench.machine import FLAGS, machine_info

    m = machine_info()
    assert m["cpu_model"] == TEST_CPU[0]
    assert m["flags"] == {f: f in TEST_CPU[1] for f in FLAGS}
    assert m["flags"]["avx2"] and not m["flags"]["amx_int8"] and not m["flags"]["avx512_bf16"]


def test_serve_load_reports_the_same_flags_as_every_other_figure():
    from edgead.bench.serve_load import cpu_flags

    assert cpu_flags() == "avx2 fma"


def _readers(folder: Path, allowed: set[str], root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if HOST_READERS.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    return found


def test_no_test_reads_the_host_cpu_flags():
    """Tests learn flags from machine_info() (pinned) or set them; only this file names the host readers."""
    assert _readers(ROOT / "tests", {"tests/test_machine.py"}) == []


def test_edgead_reads_the_host_cpu_in_one_place():
    """Every flag edgead acts on comes from bench/machine.py, which the tests pin; a second reader escapes the pin."""
    found = [line for src in SOURCES for line in _readers(ROOT / src, {"bench/machine.py"})]
    assert found == []


def test_the_scan_finds_a_host_reader(tmp_path):
    """The scan itself can fail: a file that opens /proc/cpuinfo is reported."""
    (tmp_path / "probe.py").write_text('flags = open("/proc/cpuinfo").read()\n')
    assert _readers(tmp_path, set(), root=tmp_path) == ['probe.py:1: flags = open("/proc/cpuinfo").read()']


def test_an_isa_cap_leaves_only_the_flags_below_it(monkeypatch):
    from edgead.bench import machine
    from edgead.bench.report import render_machine_line

    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("capped CPU", {"avx2", "fma", "avx512f", "avx512_vnni",
                                                                      "avx512_bf16", "amx_int8", "amx_bf16"}))
    for var, value in machine.isa_cap_env("avx2").items():
        monkeypatch.setenv(var, value)
    m = machine.machine_info()
    assert [f for f, on in m["flags"].items() if on] == ["avx2", "fma"]
    assert m["isa_cap"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                           "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert render_machine_line(m).endswith("flags: avx2, fma (capped at AVX2 by ONEDNN_MAX_CPU_ISA, "
                                           "ATEN_CPU_CAPABILITY=avx2: an emulation on this CPU)")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert [f for f, on in machine.machine_info()["flags"].items() if on] == ["avx2", "fma", "avx512f", "avx512_vnni"]
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert machine.machine_info()["isa_cap"] is None and machine.machine_info()["flags"]["amx_int8"]


def test_an_unknown_isa_cap_is_refused_in_one_line():
    import pytest

    from edgead.bench.machine import isa_cap_env
    from edgead.errors import InputError

    with pytest.raises(InputError, match="expected an ISA cap among SSE41, AVX, AVX2, .* found 'avx3'"):
        isa_cap_env("avx3")
