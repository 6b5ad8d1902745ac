"""The machine a benchmark ran on: CPU model, cores, the instruction-set flags that decide f32/bf16/int8 speed,
and the versions of the packages that take part.

**An instruction-set cap.** oneDNN (inside OpenVINO's CPU plugin and PyTorch) dispatches no higher than
``ONEDNN_MAX_CPU_ISA``; OpenVINO's own kernels ask oneDNN's dispatcher, PyTorch's own kernels and
``torch.compile``'s generated code stop at ``ATEN_CPU_CAPABILITY``, MKL's products at ``MKL_ENABLE_INSTRUCTIONS``.
With those set (``isa_cap_env`` gives them all for a cap, OpenVINO's ``OV_CPU_MAX_ISA`` included for builds that
read it), an AVX-512 machine runs the AVX2 code paths (checked on OpenVINO's counters: ``brgemm_avx2`` and
``jit_avx2`` kernels, no ``avx512``), and ``machine_info`` reports the flags the cap leaves (so tune's plan, the
baseline's bf16 autocast and every machine line follow it) with ``isa_cap`` naming it. It is an emulation: clocks,
caches and kernels that read CPUID themselves are the host's, and every figure measured that way says so.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
#: oneDNN's ONEDNN_MAX_CPU_ISA values -> the FLAGS that stay usable under that cap (values above AMX: no cap)
_AVX2 = frozenset({"avx2", "fma"})
_AVX512 = _AVX2 | {"avx512f"}
ISA_CAPS: dict[str, frozenset[str]] = {
    "SSE41": frozenset(), "AVX": frozenset(), "AVX2": _AVX2,
    "AVX2_VNNI": _AVX2 | {"avx_vnni"}, "AVX2_VNNI_2": _AVX2 | {"avx_vnni"},
    "AVX512_CORE": _AVX512, "AVX512_CORE_VNNI": _AVX512 | {"avx512_vnni"},
    "AVX512_CORE_BF16": _AVX512 | {"avx512_vnni", "avx512_bf16"},
    "AVX512_CORE_FP16": _AVX512 | {"avx512_vnni", "avx512_bf16", "avx_vnni"},
    "AVX10_1_512": _AVX512 | {"avx512_vnni", "avx512_bf16", "avx_vnni"},
}
#: PyTorch's ATEN_CPU_CAPABILITY for a cap (its kernels and torch.compile's code have avx2 and avx512 builds) and
#: MKL's MKL_ENABLE_INSTRUCTIONS (PyTorch's CPU matrix products run in MKL)
_ATEN = {"SSE41": "default", "AVX": "default", "AVX2": "avx2", "AVX2_VNNI": "avx2", "AVX2_VNNI_2": "avx2"}
_MKL = {"SSE41": "SSE4_2", "AVX": "AVX", "AVX2": "AVX2", "AVX2_VNNI": "AVX2", "AVX2_VNNI_2": "AVX2"}
_CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def isa_cap_env(cap: str) -> dict[str, str]:
    """The environment that caps oneDNN, OpenVINO and PyTorch at ``cap`` (a key of ``ISA_CAPS``, e.g. AVX2)."""
    from edgead.errors import InputError

    key = cap.upper()
    if key not in ISA_CAPS:
        raise InputError(f"expected an ISA cap among {', '.join(ISA_CAPS)}, found {cap!r}")
    return {"ONEDNN_MAX_CPU_ISA": key, "OV_CPU_MAX_ISA": key, "ATEN_CPU_CAPABILITY": _ATEN.get(key, "avx512"),
            "MKL_ENABLE_INSTRUCTIONS": _MKL.get(key, "AVX512")}


def isa_cap() -> dict[str, str] | None:
    """The cap set in this process's environment (``ONEDNN_MAX_CPU_ISA`` and its companions), or None."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap not in ISA_CAPS:
        return None
    return {v: os.environ.get(v, "") for v in _CAP_VARS}


_VERSIONED = ("edgead", "numpy", "torch", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt")


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), flags


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the instruction-set flags that decide f32/bf16/int8 speed, and package versions."""
    model, flags = _cpuinfo()
    cap = isa_cap()
    if cap is not None:
        flags = flags & ISA_CAPS[cap["ONEDNN_MAX_CPU_ISA"]]
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    versions: dict[str, str | None] = {}
    for pkg in _VERSIONED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count() or 1,
        "physical_cores": physical,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "flags": {f: f in flags for f in FLAGS},
        "isa_cap": cap,
        "versions": versions,
    }
