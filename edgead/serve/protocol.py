"""The Open Inference Protocol (KServe v2) for one detector: metadata, request decoding, response encoding.

Framework-free: bytes and dicts in, bytes and dicts out, so ``edgead serve`` and a Ray Serve deployment share it.
JSON out is strict (a NaN or infinite score or map value is ``null``; a NaN score is labelled anomalous). Covers the
JSON tensor encoding and the binary tensor extension Triton's clients use: a request or response body is
a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors, each input or output naming
its byte count in ``parameters.binary_data_size``, in order. Every malformed request raises ``ProtocolError`` with the
HTTP status to answer and a one-line message; the v2 error body is ``{"error": message}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgead import __version__
from edgead.errors import InputError
from edgead.spec import DetectorSpec

HEADER_LENGTH = "inference-header-content-length"
INPUT = "images"
OUTPUTS = ("scores", "maps", "labels")
_DTYPES = {"UINT8": np.uint8, "FP32": np.float32, "BOOL": np.bool_}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class ProtocolError(InputError):
    """A request the protocol refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error_body(message: str) -> dict[str, str]:
    return {"error": message}


@dataclass(frozen=True)
class ModelInfo:
    """What the protocol says about the served model: its name, platform, input size, map size, threshold."""

    name: str
    spec: DetectorSpec
    platform: str = "edgead"
    version: str = "1"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> tuple[str, ...]:
        return OUTPUTS if self.spec.threshold is not None else OUTPUTS[:2]

    def output_meta(self, name: str) -> dict[str, Any]:
        if name == "scores":
            return {"name": name, "datatype": "FP32", "shape": [-1]}
        if name == "maps":  # a tiled model answers frames at their own size
            size = [-1, -1] if self.spec.tiling is not None else list(self.spec.map_size)
            return {"name": name, "datatype": "FP32", "shape": [-1, *size]}
        return {"name": name, "datatype": "BOOL", "shape": [-1]}

    def metadata(self) -> dict[str, Any]:
        h, w = (-1, -1) if self.spec.tiling is not None else self.spec.input_size  # tiled: frames of any size
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, h, w, 3]}],
            "outputs": [self.output_meta(o) for o in self.outputs],
            "parameters": {"threshold": self.spec.threshold, "family": self.spec.family, "backbone": self.spec.backbone,
                           "norm": self.spec.norm, **self.extra},
        }


def server_metadata() -> dict[str, Any]:
    return {"name": "edgead", "version": __version__, "extensions": ["binary_tensor_data"]}


@dataclass(frozen=True)
class InferRequest:
    """A decoded request: the images, which outputs to return and which of them as binary, and the request id."""

    images: np.ndarray
    outputs: tuple[str, ...]
    binary: frozenset[str]
    id: str | None = None


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ProtocolError(f"expected {where} 'shape' to be a list of integers, found {value!r}")
    if any(d < 0 for d in value):
        raise ProtocolError(f"expected {where} 'shape' of non-negative sizes, found {value}")
    return tuple(value)


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"expected {where} 'parameters' to be an object, found {type(params).__name__}")
    return params


def parse_json(data: bytes, expected: str) -> Any:
    """``json.loads`` whose every failure, nesting too deep for Python's parser included, is a 400 line."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"expected {expected}, found invalid JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError(f"expected {expected}, found JSON nested too deeply to parse") from None


def json_values(arr: np.ndarray) -> list[Any]:
    """A tensor's values for a JSON body: NaN and infinities become ``null`` (strict JSON has no such numbers)."""
    values = arr.reshape(-1).tolist()
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        values = [v if math.isfinite(v) else None for v in values]
    return values


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header (as a dict) and the binary tail of a request body."""
    if header_length is None:
        json_bytes, tail = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(
                f"expected an integer Inference-Header-Content-Length, found {header_length!r}"
            ) from None
        if not 0 <= n <= len(body):
            raise ProtocolError(
                f"expected Inference-Header-Content-Length within the {len(body)}-byte body, found {n} "
                f"(truncated body?)"
            )
        json_bytes, tail = body[:n], body[n:]
    if not json_bytes:
        raise ProtocolError("expected a JSON inference request, found an empty body")
    request = parse_json(json_bytes, "a JSON inference request")
    if not isinstance(request, dict):
        raise ProtocolError(f"expected a JSON object as the inference request, found {type(request).__name__}")
    return request, tail


def _input_array(inp: dict[str, Any], tail: bytes, offset: int) -> tuple[np.ndarray, int]:
    where = f"input '{inp.get('name')}'"
    shape = _shape(inp.get("shape"), where)
    datatype = inp.get("datatype")
    if datatype != "UINT8":
        raise ProtocolError(f"expected {where} of datatype UINT8, found {datatype!r}")
    count = math.prod(shape)
    size = _parameters(inp, where).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise ProtocolError(f"expected {where} binary_data_size to be a non-negative integer, found {size!r}")
        if size != count:
            raise ProtocolError(f"expected {where} of shape {list(shape)} to hold {count} bytes, found "
                                f"binary_data_size {size}")
        if offset + size > len(tail):
            raise ProtocolError(f"expected {size} bytes of binary data for {where}, found {len(tail) - offset} "
                                f"(truncated body)")
        return np.frombuffer(tail, dtype=np.uint8, count=size, offset=offset).reshape(shape), offset + size
    if "data" not in inp:
        raise ProtocolError(f"expected {where} to carry 'data' or parameters.binary_data_size, found neither")
    try:
        values = np.asarray(inp["data"])
    except ValueError:
        raise ProtocolError(f"expected {where} data to be a (nested) list of integers, found a ragged list") from None
    if values.size != count:
        raise ProtocolError(f"expected {count} values for {where} of shape {list(shape)}, found {values.size}")
    if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
        raise ProtocolError(f"expected {where} data of integers in 0..255 (UINT8), found "
                            f"{'non-integers' if values.dtype.kind not in 'iu' else 'values out of range'}")
    return values.astype(np.uint8).reshape(shape), offset


def decode_infer(body: bytes, header_length: str | None, model: ModelInfo) -> InferRequest:
    """Decode and check a v2 infer request against the model's one ``images`` input."""
    request, tail = split_body(body, header_length)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise ProtocolError("expected 'inputs' to be a non-empty list of tensor objects")
    names = [i.get("name") for i in inputs]
    if names != [INPUT]:
        raise ProtocolError(f"expected exactly one input named '{INPUT}', found {names}")
    images, used = _input_array(inputs[0], tail, 0)
    if used != len(tail):
        raise ProtocolError(f"expected {used} bytes of binary tensor data, found {len(tail)}")
    h, w = model.spec.input_size
    if model.spec.tiling is not None:  # frames at their own size, cut by the plan; at least one tile each
        if images.ndim != 4 or images.shape[3] != 3 or images.shape[0] < 1 or images.shape[1] < h or \
                images.shape[2] < w:
            raise ProtocolError(f"expected input '{INPUT}' of shape [N, H, W, 3] with N >= 1, H >= {h} and W >= {w} "
                                f"(frames, tiled by the model's plan), found {list(images.shape)}")
    elif images.ndim != 4 or images.shape[1:] != (h, w, 3) or images.shape[0] < 1:
        raise ProtocolError(f"expected input '{INPUT}' of shape [N, {h}, {w}, 3] with N >= 1, found "
                            f"{list(images.shape)}")
    default_binary = bool(_parameters(request, "request").get("binary_data_output", False))
    wanted = request.get("outputs")
    if wanted is None:
        outputs = model.outputs
        binary = frozenset(outputs) if default_binary else frozenset()
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
            raise ProtocolError("expected 'outputs' to be a list of objects with a 'name'")
        outputs = tuple(o.get("name") for o in wanted)
        unknown = [o for o in outputs if o not in model.outputs]
        if unknown:
            raise ProtocolError(f"expected outputs among {list(model.outputs)}, found {unknown}")
        binary = frozenset(
            o.get("name") for o in wanted if _parameters(o, "output").get("binary_data", default_binary)
        )
    rid = request.get("id")
    return InferRequest(np.ascontiguousarray(images), outputs, binary, None if rid is None else str(rid))


def encode_infer(
    model: ModelInfo, req: InferRequest, scores: np.ndarray, maps: np.ndarray, labels: np.ndarray | None
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header."""
    tensors = {"scores": np.asarray(scores, np.float32), "maps": np.asarray(maps, np.float32)}
    if labels is not None:
        tensors["labels"] = np.asarray(labels, np.bool_)
    out: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in req.outputs:
        arr = np.ascontiguousarray(tensors[name])
        entry: dict[str, Any] = {"name": name, "datatype": _DTYPE_NAMES[arr.dtype], "shape": list(arr.shape)}
        if name in req.binary:
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = json_values(arr)
        out.append(entry)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": out}
    if req.id is not None:
        response["id"] = req.id
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
