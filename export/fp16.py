"""FP16 ONNX: the end-to-end export converted to mixed FP16 with FP32 islands, for ONNX Runtime and TensorRT.

``OUT/onnx-fp16/`` (model.onnx + manifest) is written from the FP32 export in ``OUT``. The converter is
onnxconverter-common's ``convert_float_to_float16`` (a small, pure-Python, maintained converter that installs
here without touching other packages; NVIDIA ModelOpt's AutoCast would pull in a larger stack of packages).
Its node block list is ``edgead.export.islands.fp32_islands`` (one rule for FP16 and INT8); its op block list
is the converter's default (ops without FP16 kernels in ONNX Runtime). Casts are inserted at every island
boundary; the graph I/O stays uint8 images in, float32 scores and maps out.

TensorRT builds this graph strongly typed: the precision of every tensor is the one written here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import onnx

from edgead.errors import ArtifactError, require
from edgead.export.islands import fp32_islands
from edgead.fsutil import atomic_dir
from edgead.registry import ONNX, artifact_folder
from edgead.runtimes.manifest import Manifest, write_manifest

MODEL = "model.onnx"
FP16_MAX = 65504.0


def convert_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` converted to mixed FP16 (islands kept FP32); returns the model and the island node names."""
    f16 = require("onnxconverter_common.float16", "torch", "FP16 ONNX conversion (onnxconverter-common)")
    islands = [n.name for n in fp32_islands(model)]
    model = _unshare_island_constants(model, set(islands))
    with warnings.catch_warnings():  # one warning per tiny weight raised to FP16's smallest subnormal
        warnings.simplefilter("ignore", UserWarning)
        converted = f16.convert_float_to_float16(
            model, keep_io_types=True, node_block_list=islands, op_block_list=list(f16.DEFAULT_OP_BLOCK_LIST),
            # clamp constants to what FP16 holds, not to the converter's default of 1e4
            min_positive_val=2.0 ** -24, max_finite_val=FP16_MAX,
        )
    _casts_follow_types(converted)
    _outputs_as_float32(converted)
    _check_io(model, converted)
    return converted, islands


def _unshare_island_constants(model: onnx.ModelProto, islands: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` where islands own their constants: the converter keeps an initializer shared by an
    FP32 island and an FP16 node in FP32 and then feeds it to the FP16 node uncast (a type error)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, set[bool]] = {}
    for n in model.graph.node:
        for i in n.input:
            if i in inits:
                users.setdefault(i, set()).add(n.name in islands)
    shared = {name for name, kinds in users.items() if len(kinds) == 2}
    for name in sorted(shared):
        copy = onnx.TensorProto.FromString(inits[name].SerializeToString())
        copy.name = f"{name}__fp32_island"
        model.graph.initializer.append(copy)
    for n in model.graph.node:
        if n.name in islands:
            for k, i in enumerate(n.input):
                if i in shared:
                    n.input[k] = f"{i}__fp32_island"
    return model


def _casts_follow_types(model: onnx.ModelProto) -> None:
    """The converter retypes tensors but leaves the exporter's own ``Cast(to=float)`` nodes (the uint8 image
    cast, for one) as they were; make each such Cast produce the FP16 type its output was given."""
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type == "Cast" and types.get(node.output[0]) == f16:
            for a in node.attribute:
                if a.name == "to" and a.i == f32:
                    a.i = f16


def _outputs_as_float32(model: onnx.ModelProto) -> None:
    """The converter turns a graph output made by a blocked (FP32) node into FP16 through a trailing Cast,
    even with ``keep_io_types``; make that Cast a float32 one so the outputs keep their FP32 values."""
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    producer = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != f16:
            continue
        node = producer.get(out.name)
        if node is None or node.op_type != "Cast":
            raise ArtifactError(f"FP16 conversion left output {out.name} in FP16 without a Cast to undo")
        for a in node.attribute:
            if a.name == "to":
                a.i = f32
        out.type.tensor_type.elem_type = f32
        for vi in model.graph.value_info:
            if vi.name == out.name:
                vi.type.tensor_type.elem_type = f32


def _check_io(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    def io(m: onnx.ModelProto) -> list[tuple[str, int]]:
        return [(v.name, v.type.tensor_type.elem_type) for v in (*m.graph.input, *m.graph.output)]

    if io(src) != io(dst):
        raise ArtifactError(f"FP16 conversion changed the graph I/O: expected {io(src)}, found {io(dst)}")


def write_fp16(artifact_dir: str | Path, out: str | Path | None = None,
               verify: Callable[[Path], dict | None] | None = None) -> tuple[Path, Manifest]:
    """Write ``OUT/onnx-fp16/`` from the FP32 export in ``artifact_dir``; returns the folder and its manifest.

    ``verify(folder)`` runs on the finished folder before it replaces ``out``: when it raises, nothing is
    written; a dict it returns is recorded in the manifest as ``cpu_check``
    (``edgead.export.precision.precision_graph`` passes its CPU check here).
    """
    from edgead.export.onnx import set_metadata, source_onnx

    artifact_dir = Path(artifact_dir)
    onnx_path, src = source_onnx(artifact_dir)
    model = onnx.load(str(onnx_path))
    converted, islands = convert_fp16(model)
    set_metadata(converted, {p.key: p.value for p in model.metadata_props})
    out = Path(out) if out else artifact_folder(artifact_dir, ONNX.name, "fp16")
    common = require("onnxconverter_common", "torch", "FP16 ONNX conversion")
    with atomic_dir(out) as tmp:
        onnx.save(converted, str(tmp / MODEL))
        extra = {"fp32_islands": islands, "converter": f"onnxconverter-common {common.__version__}",
                 "source": onnx_path.name, "io": "uint8 images in, float32 scores and maps out"}
        m = write_manifest(tmp, ONNX.manifest_name, "fp16", MODEL, src.spec, {"onnx": onnx.__version__}, src.batch,
                           extra)
        if verify is not None:
            figures = verify(tmp)
            if figures:
                m = write_manifest(tmp, "onnxruntime", "fp16", MODEL, src.spec, {"onnx": onnx.__version__},
                                   src.batch, {**extra, "cpu_check": figures})
    return out, m
