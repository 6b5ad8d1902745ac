"""FLOP counting, two independent ways, with one set of per-op conventions.

``torch_flops(detector)`` runs the detector under ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products and convolutions) plus a ``TorchDispatchMode`` that counts the elementwise work the flop counter
ignores. ``onnx_flops(model)`` walks an ONNX graph whose shapes are inferred with the batch fixed. Both follow
the rules below, so on an exported detector they agree to well within 1 % (exactly, on the graphs in the
tests).

Conventions (one FLOP = one scalar add, multiply, compare or transcendental; N = elements of the output unless
said otherwise):

==========================================  ==================================================================
op                                          FLOPs
==========================================  ==================================================================
MatMul / Gemm / linear / bmm                2*M*N*K per matrix product ("matmul" class)
Conv                                        2 * N * (C_in/groups) * prod(kernel) ("matmul" class)
bias of linear / Gemm / Conv                N (an add per output; "elementwise" class, as the exported Add is)
Add Sub Mul Div Pow Tanh Erf Exp Sqrt ...   N (1 per output element, also for transcendental functions)
Clip / clamp, Relu, Sigmoid, Max, Min       N
DyT ``tanh(alpha*x)*w + b``                 4 N (mul, tanh, mul, add: no special rule, it is four elementwise
                                            ops)
LayerNorm over rows of C                    5 N + 2 rows (+ N for the scale, + N for the bias): sum for the
                                            mean, subtract, square, sum for the variance, divide; per row add
                                            eps and sqrt
GELU (erf form)                             5 N: divide by sqrt 2, erf, add 1, multiply by x, multiply by 0.5
GELU (tanh form)                            8 N: x^3, *0.044715, +x, *sqrt(2/pi), tanh, +1, *x, *0.5
Softmax                                     5 N: max, subtract, exp, sum, divide
ReduceSum / ReduceMean / ReduceMax          1 per *input* element
ReduceL2 / vector 2-norm                    2 per input element (square, accumulate) + 1 per output (sqrt)
Resize / upsample, bilinear                 7 N (4 multiplies, 3 adds per output pixel); nearest 0
attention (scaled_dot_product_attention)    QK^T and PV products (matmul class) + Softmax 5 N over the scores
                                            + scaling q and k by sqrt(scale) (numel q + numel k), which is how
                                            the exporter writes it
data movement (Reshape, Transpose, Concat,  0
Slice, Gather, Cast, Pad, TopK, Where, ...)
==========================================  ==================================================================

A graph whose norm affines were folded into the next linear layers (``edgead.export.fold_norms``, on by default
in ``export_onnx``) really does less work: 2 N fewer per folded norm (its multiply and add). Compare the torch
count with the unfolded export (``export_onnx(..., fold_norms=False)``).

Elementwise ops on integer tensors (shape arithmetic) count 0. Ops with no rule count 0 and are listed in
``FlopCount.uncounted`` so a gap is visible rather than silent.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgead.errors import EdgeadError

#: per-element cost of ops that map one-to-one between aten and ONNX
UNARY_BINARY = {
    "add": 1,
    "sub": 1,
    "rsub": 1,
    "mul": 1,
    "div": 1,
    "pow": 1,
    "tanh": 1,
    "erf": 1,
    "exp": 1,
    "log": 1,
    "sqrt": 1,
    "rsqrt": 1,
    "reciprocal": 1,
    "neg": 1,
    "abs": 1,
    "clamp": 1,
    "clamp_min": 1,
    "clamp_max": 1,
    "relu": 1,
    "sigmoid": 1,
    "maximum": 1,
    "minimum": 1,
    "silu": 2,
}
LAYERNORM_PER_ELEMENT = 5
LAYERNORM_PER_ROW = 2
GELU_ERF = 5
GELU_TANH = 8
SOFTMAX = 5
BILINEAR = 7


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass: ``matmul`` (products and convolutions) + ``elementwise`` (everything
    else)."""

    matmul: int
    elementwise: int
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()
    batch: int = 1

    @property
    def total(self) -> int:
        return self.matmul + self.elementwise

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "matmul": self.matmul,
            "elementwise": self.elementwise,
            "batch": self.batch,
            "by_op": dict(sorted(self.by_op.items())),
            "uncounted": list(self.uncounted),
        }


def relative_difference(a: FlopCount, b: FlopCount) -> float:
    """``|a - b| / max(a, b)`` of the totals."""
    return abs(a.total - b.total) / max(a.total, b.total, 1)


class _Tally:
    def __init__(self) -> None:
        self.matmul = 0
        self.elementwise = 0
        self.by_op: Counter[str] = Counter()
        self.uncounted: set[str] = set()

    def add(self, op: str, flops: int, matmul: bool = False) -> None:
        flops = int(flops)
        if matmul:
            self.matmul += flops
        else:
            self.elementwise += flops
        self.by_op[op] += flops

    def result(self, batch: int) -> FlopCount:
        return FlopCount(
            self.matmul, self.elementwise, dict(self.by_op), tuple(sorted(self.uncounted)), batch
        )


# ------------------------------------------------------------------------------------------------------------
# (a) PyTorch: FlopCounterMode for products, a dispatch mode for the rest
# ------------------------------------------------------------------------------------------------------------

#: aten ops that move or select data, or are no-ops at inference
_TORCH_ZERO = {
    "view",
    "_unsafe_view",
    "reshape",
    "t",
    "transpose",
    "permute",
    "expand",
    "unsqueeze",
    "squeeze",
    "slice",
    "select",
    "cat",
    "stack",
    "clone",
    "_to_copy",
    "to",
    "copy",
    "unbind",
    "split",
    "split_with_sizes",
    "contiguous",
    "flatten",
    "reflection_pad2d",
    "replication_pad2d",
    "constant_pad_nd",
    "pad",
    "topk",
    "detach",
    "alias",
    "dropout",
    "empty",
    "zeros",
    "ones",
    "full",
    "arange",
    "lift_fresh",
    "where",
    "eq",
    "ne",
    "gt",
    "lt",
    "ge",
    "le",
    "index",
    "gather",
    "masked_fill",
    "upsample_nearest2d",
    "_reshape_alias",
    "as_strided",
    "fill",
    "zeros_like",
    "ones_like",
    "empty_like",
    "new_empty",
    "new_zeros",
    "sort",
    "argmax",
    "max_pool2d",
    "sym_size",
}
#: products FlopCounterMode counts; the dispatch mode adds only their bias
_TORCH_PRODUCTS = {
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "convolution",
    "_convolution",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention",
}


def _numel(t: Any) -> int:
    return int(t.numel()) if hasattr(t, "numel") else 0


def _is_float(t: Any) -> bool:
    return hasattr(t, "is_floating_point") and t.is_floating_point()


def _first_tensor(out: Any) -> Any:
    if isinstance(out, (tuple, list)):
        return out[0] if out else None
    return out


def _torch_rule(name: str, args: tuple, kwargs: dict, out: Any) -> tuple[int, bool]:
    """FLOPs of one aten call under the conventions; ``(flops, known)``."""
    o = _first_tensor(out)
    if name in _TORCH_ZERO:
        return 0, True
    if name in ("addmm", "baddbmm"):
        return _numel(o), True  # the bias add; the product is FlopCounterMode's
    if name in ("mm", "bmm"):
        return 0, True
    if name in ("convolution", "_convolution"):
        return (_numel(o) if len(args) > 2 and args[2] is not None else 0), True
    if name.startswith("_scaled_dot_product"):
        q, k = args[0], args[1]
        b, h, lq = q.shape[0], q.shape[1], q.shape[2]
        lk = k.shape[2]
        return SOFTMAX * b * h * lq * lk + _numel(q) + _numel(k), True
    if not _is_float(o):
        return 0, True
    n = _numel(o)
    if name in UNARY_BINARY:
        return UNARY_BINARY[name] * n, True
    if name == "gelu":
        return (GELU_TANH if kwargs.get("approximate", "none") == "tanh" else GELU_ERF) * n, True
    if name in ("_softmax", "softmax", "_log_softmax", "log_softmax"):
        return SOFTMAX * n, True
    if name in ("native_layer_norm", "layer_norm"):
        x, shape = args[0], args[1]
        rows = _numel(x) // max(1, math.prod(shape))
        weight = args[2] if len(args) > 2 else kwargs.get("weight")
        bias = args[3] if len(args) > 3 else kwargs.get("bias")
        affine = (weight is not None) + (bias is not None)
        return (LAYERNORM_PER_ELEMENT + affine) * _numel(x) + LAYERNORM_PER_ROW * rows, True
    if name in ("sum", "mean", "amax", "amin", "max", "min", "prod"):
        return _numel(args[0]), True
    if name == "linalg_vector_norm":
        ord_ = args[1] if len(args) > 1 else kwargs.get("ord", 2)
        if float(ord_) == 2.0:
            return 2 * _numel(args[0]) + n, True
        return 0, False
    if name in ("upsample_bilinear2d", "_upsample_bilinear2d_aa"):
        return BILINEAR * n, True
    return 0, False


def _dispatch_counter(tally: _Tally):
    from torch.utils._python_dispatch import TorchDispatchMode

    class ElementwiseCounter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = func.overloadpacket.__name__
            name = name[:-1] if name.endswith("_") and not name.startswith("_") else name
            flops, known = _torch_rule(name, args, kwargs, out)
            if not known:
                tally.uncounted.add(f"aten.{name}")
            elif flops:
                # a product's own FLOPs come from FlopCounterMode; here only its extras (bias, softmax,
                # scaling)
                tally.add(f"aten.{name}.extra" if name in _TORCH_PRODUCTS else f"aten.{name}", flops)
            return out

    return ElementwiseCounter()


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """QK^T and PV products of CPU flash attention (FlopCounterMode has no entry for the CPU kernel)."""
    b, h, lq, d = query_shape
    lk = key_shape[2]
    dv = value_shape[3]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


def torch_flops(detector: Any, batch: int = 1, images: Any = None) -> FlopCount:
    """FLOPs of ``detector`` (uint8 ``(batch, H, W, 3)`` in) under the module's conventions."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if images is None:
        h, w = detector.spec.input_size
        images = torch.zeros((batch, h, w, 3), dtype=torch.uint8)
    tally = _Tally()
    aten = torch.ops.aten
    custom = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    # no_grad, not inference_mode: under inference_mode composite ops (linear, sdpa) reach the modes
    # undecomposed.
    with torch.no_grad(), counter, _dispatch_counter(tally):
        detector.eval()(images)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        tally.add(str(op), int(flops), matmul=True)
    return tally.result(int(images.shape[0]))


# ------------------------------------------------------------------------------------------------------------
# (b) ONNX: walk the graph with inferred shapes
# ------------------------------------------------------------------------------------------------------------

_ONNX_UNARY_BINARY = {
    "Add": 1,
    "Sub": 1,
    "Mul": 1,
    "Div": 1,
    "Pow": 1,
    "Tanh": 1,
    "Erf": 1,
    "Exp": 1,
    "Log": 1,
    "Sqrt": 1,
    "Reciprocal": 1,
    "Neg": 1,
    "Abs": 1,
    "Clip": 1,
    "Relu": 1,
    "Sigmoid": 1,
    "Max": 1,
    "Min": 1,
}
_ONNX_ZERO = {
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "GatherElements",
    "Shape",
    "Cast",
    "Expand",
    "Flatten",
    "Identity",
    "Pad",
    "TopK",
    "Where",
    "Equal",
    "Greater",
    "Less",
    "Constant",
    "ConstantOfShape",
    "Range",
    "Tile",
    "Dropout",
    "Not",
    "And",
    "Or",
    "Size",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "ScatterND",
    "CastLike",
    "QuantizeLinear",
    "DequantizeLinear",
}
_ONNX_REDUCE = {
    "ReduceSum": 1,
    "ReduceMean": 1,
    "ReduceMax": 1,
    "ReduceMin": 1,
    "ReduceSumSquare": 2,
    "ReduceProd": 1,
}
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init_names = {i.name for i in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    del m.graph.value_info[:]
    for out in m.graph.output:
        for d in out.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
    return m


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """name -> (static shape or None, elem_type) for every value in the graph."""
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    table: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        static = dims if tt.HasField("shape") and all(d >= 0 for d in dims) else None
        table[vi.name] = (static, tt.elem_type)
    for init in model.graph.initializer:
        table[init.name] = (tuple(init.dims), init.data_type)
    for node in model.graph.node:
        if node.op_type == "Constant":
            t = numpy_helper.to_array(node.attribute[0].t) if node.attribute and node.attribute[0].t else None
            if t is not None:
                table[node.output[0]] = (tuple(t.shape), helper.np_dtype_to_tensor_dtype(t.dtype))
    return table


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, int]] | None:
    """Fallback: onnxruntime's symbolic shape inference (resolves Reshape targets built from Shape ops)."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return None
    log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = log.level
    log.setLevel(logging.ERROR)  # its "Unable to determine ... treat as equal" guesses are not the user's concern
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    finally:
        log.setLevel(level)
    if inferred is None:
        return None
    table: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        table[vi.name] = (dims if all(d >= 0 for d in dims) else None, tt.elem_type)
    for init in model.graph.initializer:
        table[init.name] = (tuple(init.dims), init.data_type)
    return table


def _runtime_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, int]] | None:
    """Last fallback: run the graph once on zeros in ONNX Runtime with every value as an output, and read the shapes.

    Needed where a shape is *computed* from data-independent but inference-opaque ops, e.g. timm's Swin padding
    (``Pad`` whose pads come from ``Shape``/``Mod`` arithmetic), which neither ONNX nor ORT's symbolic inference
    makes static. The graph's input shapes must be static (the batch is already fixed).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    feeds = {}
    inits = {i.name for i in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if any(d < 0 for d in dims):
            return None
        feeds[inp.name] = np.zeros(dims, dtype=helper.tensor_dtype_to_np_dtype(tt.elem_type))
    known = {o.name for o in m.graph.output}
    names = [o for n in m.graph.node for o in n.output if o and o not in known]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    table: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for name, value in zip(outs, sess.run(outs, feeds), strict=True):
        arr = np.asarray(value)
        table[name] = (tuple(arr.shape), helper.np_dtype_to_tensor_dtype(arr.dtype))
    for name, arr in feeds.items():
        table[name] = (tuple(arr.shape), helper.np_dtype_to_tensor_dtype(arr.dtype))
    for init in model.graph.initializer:
        table[init.name] = (tuple(init.dims), init.data_type)
    return table


def _onnx_node_flops(node: onnx.NodeProto, shape: Any, tally: _Tally) -> None:
    op = node.op_type
    outs = [shape(o) for o in node.output if o]
    out, out_type = outs[0] if outs else (None, 0)
    if op in _ONNX_ZERO:
        return
    if op == "MatMul":
        a, _ = shape(node.input[0])
        k = a[-1]
        tally.add(op, 2 * math.prod(out) * k, matmul=True)
        return
    if op == "Gemm":
        a, _ = shape(node.input[0])
        k = a[0] if _attr(node, "transA", 0) else a[1]
        tally.add(op, 2 * math.prod(out) * k, matmul=True)
        if len(node.input) > 2 and node.input[2]:
            tally.add("Gemm.bias", math.prod(out))
        return
    if op == "Conv":
        w, _ = shape(node.input[1])
        tally.add(op, 2 * math.prod(out) * math.prod(w[1:]), matmul=True)
        if len(node.input) > 2 and node.input[2]:
            tally.add("Conv.bias", math.prod(out))
        return
    if out_type not in _FLOAT_TYPES:
        return
    n = math.prod(out)
    if op in _ONNX_UNARY_BINARY:
        tally.add(op, _ONNX_UNARY_BINARY[op] * n)
    elif op == "LayerNormalization":
        x, _ = shape(node.input[0])
        axis = _attr(node, "axis", -1) % len(x)
        rows = math.prod(x[:axis])
        affine = sum(1 for i in node.input[1:3] if i)
        tally.add(op, (LAYERNORM_PER_ELEMENT + affine) * n + LAYERNORM_PER_ROW * rows)
    elif op == "Gelu":
        tally.add(
            op, (GELU_TANH if _attr(node, "approximate", b"none") in (b"tanh", "tanh") else GELU_ERF) * n
        )
    elif op in ("Softmax", "LogSoftmax"):
        tally.add(op, SOFTMAX * n)
    elif op in _ONNX_REDUCE:
        x, _ = shape(node.input[0])
        tally.add(op, _ONNX_REDUCE[op] * math.prod(x))
    elif op == "ReduceL2":
        x, _ = shape(node.input[0])
        tally.add(op, 2 * math.prod(x) + n)
    elif op == "Resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode == "linear":
            tally.add(op, BILINEAR * n)
        elif mode != "nearest":
            tally.uncounted.add(f"Resize({mode})")
    else:
        tally.uncounted.add(op)


def onnx_flops(model: str | Path | onnx.ModelProto, batch: int = 1) -> FlopCount:
    """FLOPs of an ONNX graph with its dynamic batch fixed to ``batch``, under the module's conventions."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    fixed = _fix_batch(model, batch)
    table = _shapes(fixed)
    needed = [
        o for n in fixed.graph.node if n.op_type not in _ONNX_ZERO for o in [*n.output, *n.input[:2]] if o
    ]
    for fallback in (_symbolic_shapes, _runtime_shapes):
        if all(table.get(o, (None, 0))[0] is not None for o in needed):
            break
        table = fallback(fixed) or table

    def shape(name: str) -> tuple[tuple[int, ...], int]:
        s, t = table.get(name, (None, 0))
        if s is None:
            raise EdgeadError(
                f"FLOP count: no static shape for '{name}' after shape inference with batch {batch}"
            )
        return s, t

    tally = _Tally()
    for node in fixed.graph.node:
        _onnx_node_flops(node, shape, tally)
    return tally.result(batch)


def format_flops(n: float) -> str:
    """``2.96 GFLOP``-style text."""
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} FLOP"


def agreement(counts: Iterable[FlopCount]) -> float:
    """Largest relative spread of the totals of several counts of the same model."""
    totals = np.array([c.total for c in counts], dtype=np.float64)
    return float((totals.max() - totals.min()) / max(totals.max(), 1.0))
