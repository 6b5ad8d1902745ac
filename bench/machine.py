"""The machine a benchmark ran on: CPU model, cores, the instruction-set flags that decide f32/bf16/int8 speed,
and the versions of the packages that take part."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
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
        "versions": versions,
    }
