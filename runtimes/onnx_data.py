"""The external-data files an in-memory ONNX model names (``onnx.save(..., save_as_external_data=True)``).

Runners compile ONNX models from the bytes they hashed, so a model whose weights live in other files must have
those files read (and hashed) by edgead too: an engine given only the model bytes would otherwise look the
files up by path itself (OpenVINO relative to the working folder), after, and outside, the hash check.
edgead's own exports embed their weights (``onnx.save`` without external data, below protobuf's 2 GB limit).
"""

from __future__ import annotations

from edgead.errors import ArtifactError


def external_files(data: bytes, where: str) -> list[str]:
    """The file names (``location``) external tensors of the serialized model ``data`` point to, in order."""
    if b"location" not in data:  # every external tensor carries the key "location": most models stop here
        return []
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError and friends: one line, not a protobuf traceback
        raise ArtifactError(f"{where} is corrupt: expected an ONNX model, found unreadable protobuf ({exc})") from None
    names: list[str] = []
    for tensor in _tensors(model.graph, [f.node for f in model.functions]):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location not in names:
                names.append(location)
    return names


def _tensors(graph, more_nodes=()):  # noqa: ANN001, ANN202 - onnx protobuf types
    """Every tensor of a graph: initializers, sparse initializers, constants in node attributes, subgraphs."""
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for nodes in (graph.node, *more_nodes):
        for node in nodes:
            for a in node.attribute:
                yield from (a.t, a.sparse_tensor.values, *a.tensors, *(t.values for t in a.sparse_tensors))
                for sub in (a.g, *a.graphs):
                    yield from _tensors(sub)
