"""Fold the per-channel affine of each norm into the linear layers that consume it (an ONNX graph rewrite).

A norm ends in ``y = n * w + b`` (``n`` = the normalised LayerNorm output, or ``tanh(alpha * x)`` for DyT).
When every consumer of ``y`` is a linear layer ``y @ W + c`` (a ``MatMul`` by a constant, optionally followed
by an ``Add`` of a constant bias, or a ``Gemm``), then ``y @ W + c = n @ (diag(w) W) + (b W + c)``: the affine
disappears into the weights the linear layer already has. In a ViT that is ``norm1 -> qkv`` and ``norm2 ->
fc1`` of every block; norms whose output also feeds anything else (residuals, slicing, the head) are left
alone.

Patterns rewritten:
- ``LayerNormalization(x, w, b)``: its scale becomes ones and its bias input is dropped;
- DyT as exported, ``Add(Mul(Tanh(...), w), b)`` with constant ``w`` and ``b`` of shape ``(C,)``: the ``Mul`` and
  ``Add`` are removed and the consumers read the ``Tanh`` output.

The caller checks parity (``edgead.export.onnx`` does, with the same check batch as the export).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class _Linear:
    """One consumer: ``MatMul(y, W)`` [+ ``Add(., c)``] or ``Gemm(y, W, c)``."""

    node: onnx.NodeProto
    weight: np.ndarray  # as (C_in, C_out)
    trans_b: bool
    bias_node: onnx.NodeProto | None  # the Add after a MatMul
    bias: np.ndarray | None


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.outputs = {o.name for o in g.output}
        self.names = set(self.inits) | {o for n in g.node for o in n.output}

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def new_init(self, base: str, value: np.ndarray) -> str:
        name, k = f"{base}_folded", 1
        while name in self.names:
            name, k = f"{base}_folded{k}", k + 1
        self.names.add(name)
        self.model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        self.consts[name] = value
        return name

    def only_consumers(self, name: str) -> list[onnx.NodeProto] | None:
        return None if name in self.outputs else self.consumers.get(name, [])


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


def _as_linear(g: _Graph, node: onnx.NodeProto, y: str, channels: int) -> _Linear | None:
    if node.op_type == "MatMul" and node.input[0] == y:
        w = g.const(node.input[1])
        if w is None or w.ndim != 2 or w.shape[0] != channels:
            return None
        after = g.only_consumers(node.output[0])
        if after is not None and len(after) == 1 and after[0].op_type == "Add":
            add = after[0]
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            c = g.const(other)
            if c is not None and c.shape == (w.shape[1],):
                return _Linear(node, w, False, add, c)
        return _Linear(node, w, False, None, None)
    if node.op_type == "Gemm" and node.input[0] == y and not _attr(node, "transA", 0):
        w = g.const(node.input[1])
        if w is None or w.ndim != 2:
            return None
        trans_b = bool(_attr(node, "transB", 0))
        w = w.T if trans_b else w
        if w.shape[0] != channels or _attr(node, "alpha", 1) != 1 or _attr(node, "beta", 1) != 1:
            return None
        c = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if c is not None and c.shape != (w.shape[1],):
            return None
        return _Linear(node, w, trans_b, None, c)
    return None


def _linear_consumers(g: _Graph, y: str, channels: int) -> list[_Linear] | None:
    users = g.only_consumers(y)
    if not users:
        return None
    linears = [_as_linear(g, n, y, channels) for n in users]
    return None if any(lin is None for lin in linears) else linears  # type: ignore[return-value]


def _fold_into(g: _Graph, lin: _Linear, scale: np.ndarray, shift: np.ndarray | None, source: str) -> None:
    """Rewrite one consumer for input ``source`` = (its old input - shift) / scale."""
    w = lin.weight.astype(np.float64)
    new_w = scale.astype(np.float64)[:, None] * w
    new_c = np.zeros(w.shape[1]) if lin.bias is None else lin.bias.astype(np.float64)
    if shift is not None:
        new_c = new_c + shift.astype(np.float64) @ w
    node = lin.node
    node.input[0] = source
    node.input[1] = g.new_init(node.input[1], new_w.T if lin.trans_b else new_w)
    if node.op_type == "Gemm":
        c_name = g.new_init(node.name or "gemm_bias", new_c)
        if len(node.input) > 2:
            node.input[2] = c_name
        else:
            node.input.append(c_name)
    elif lin.bias_node is not None:
        add = lin.bias_node
        idx = 1 if add.input[0] == node.output[0] else 0
        add.input[idx] = g.new_init(add.input[idx], new_c)
    elif shift is not None and np.any(shift):
        out = node.output[0]
        mid = f"{out}_prebias"
        node.output[0] = mid
        bias = g.new_init(f"{node.name}_bias", new_c)
        add = helper.make_node("Add", [mid, bias], [out], name=f"{node.name}_folded_bias")
        nodes = g.model.graph.node
        nodes.insert(list(nodes).index(node) + 1, add)


def _fold_layernorm(g: _Graph, node: onnx.NodeProto) -> bool:
    scale = g.const(node.input[1]) if len(node.input) > 1 else None
    shift = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or scale.ndim != 1 or (len(node.input) > 2 and node.input[2] and shift is None):
        return False
    linears = _linear_consumers(g, node.output[0], scale.shape[0])
    if not linears:
        return False
    for lin in linears:
        _fold_into(g, lin, scale, shift, node.output[0])
    node.input[1] = g.new_init(node.input[1], np.ones_like(scale))
    while len(node.input) > 2:
        node.input.pop()
    return True


def _dyt_affine(g: _Graph, add: onnx.NodeProto) -> tuple[onnx.NodeProto, str, np.ndarray, np.ndarray] | None:
    """``Add(Mul(Tanh(.), w), b)`` -> (mul node, tanh output, w, b)."""
    for mul_out, b_name in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        mul, b = g.producer.get(mul_out), g.const(b_name)
        if mul is None or mul.op_type != "Mul" or b is None or b.ndim != 1:
            continue
        for t_out, w_name in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            tanh, w = g.producer.get(t_out), g.const(w_name)
            if tanh is not None and tanh.op_type == "Tanh" and w is not None and w.shape == b.shape:
                if g.consumers[mul_out] == [add] and len(g.consumers[t_out]) == 1:
                    return mul, t_out, w, b
    return None


def _fold_dyt(g: _Graph, add: onnx.NodeProto, dead: list[onnx.NodeProto]) -> bool:
    found = _dyt_affine(g, add)
    if found is None:
        return False
    mul, t_out, w, b = found
    linears = _linear_consumers(g, add.output[0], w.shape[0])
    if not linears:
        return False
    for lin in linears:
        _fold_into(g, lin, w, b, t_out)
    dead.extend([mul, add])
    return True


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def fold_norm_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each foldable norm affine folded into its linear consumers; and how many."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    dead: list[onnx.NodeProto] = []
    folded = 0
    for node in list(out.graph.node):
        if node.op_type == "LayerNormalization":
            folded += _fold_layernorm(g, node)
        elif node.op_type == "Add":
            folded += _fold_dyt(g, node, dead)
    for node in dead:
        out.graph.node.remove(node)
    _drop_unused_initializers(out)
    return out, folded
