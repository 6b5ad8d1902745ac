"""Property tests for the Python manifest and checkpoint-spec readers: whatever a mutated file holds, reading it
either succeeds or raises ``EdgeadError`` (one line for the CLI), never another exception.

Mutations: any field replaced by any JSON value (nested up to a few levels), fields deleted, extra keys, byte
flips / insertions / truncations of the text, and very deep nesting. The C reader gets the same treatment from
libFuzzer (runtimes/c/fuzz/).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgead.errors import EdgeadError
from edgead.runtimes.manifest import MANIFEST, read_manifest, write_manifest
from edgead.spec import DetectorSpec

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _spec() -> DetectorSpec:
    return DetectorSpec("fbft", "vit_tiny_test_patch14", "layernorm", (3, 5), (56, 56), threshold=0.5)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("art")
    (folder / "model.xml").write_bytes(b"<net/>")
    (folder / "model.bin").write_bytes(b"\0" * 64)
    write_manifest(folder, "openvino", "fp32", "model.xml", _spec())
    return folder, json.loads((folder / MANIFEST).read_text())


def _paths(d: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts and lists."""
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(d: dict, data: st.DataObject) -> None:
    """Delete one drawn key of ``d`` (in place) or replace its value with a drawn JSON value."""
    path = data.draw(st.sampled_from(_paths(d)))
    parent = d
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values)


def _read(folder: Path, text: str | bytes) -> None:
    path = folder / MANIFEST
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        read_manifest(folder)
    except EdgeadError:
        pass


@SETTINGS
@given(data=st.data())
def test_any_field_mutation_is_an_edgead_error(artifact, data):
    folder, good = artifact
    d = json.loads(json.dumps(good))
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(d, data)
        if not isinstance(d, dict):
            break
    _read(folder, json.dumps(d))


@SETTINGS
@given(data=st.data())
def test_any_byte_mutation_is_an_edgead_error(artifact, data):
    folder, good = artifact
    raw = bytearray(json.dumps(good, indent=1).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[i : i + data.draw(st.integers(1, 8))]
        else:
            del raw[i:]
        if not raw:
            break
    _read(folder, bytes(raw))


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,                          # deeper than Python's recursion limit
    '{"spec": ' + "{" * 50_000 + "}" * 50_000 + "}",
    '{"format": 1e999}', '{"format": NaN}', '{"engine": "a", "engine": "b"}',
])
def test_pathological_json_is_an_edgead_error(artifact, text):
    folder, _ = artifact
    (folder / MANIFEST).write_text(text)
    with pytest.raises(EdgeadError, match="corrupt"):
        read_manifest(folder)


@SETTINGS
@given(data=st.data())
def test_checkpoint_spec_mutation_is_an_edgead_error(tmp_path_factory, data):
    from edgead.models.checkpoint import SPEC, read_spec

    folder = tmp_path_factory.mktemp("ck", numbered=True)
    d = _spec().to_dict()
    _mutate(d, data)
    (folder / SPEC).write_text(json.dumps(d))
    try:
        read_spec(folder)
    except EdgeadError:
        pass
