#!/usr/bin/env bash
# The anomalib 2.7 peer for issue 28's comparison, in its own venv: .peer-venv/anomalib (gitignored).
#
#   bash bench/peers/anomalib-venv.sh            # creates or completes the venv; idempotent
#   PEER_PYTHON=python3.11 bash bench/peers/anomalib-venv.sh
#
# What goes in, and why (nothing else; edgead's .venv is never touched):
#   anomalib==2.7.0             the peer itself (its Dinomaly, its Engine/to_openvino export, its OpenVINOInferencer)
#   torch/torchvision           the pins of constraints.txt (the same PyTorch build edgead's venv runs)
#   timm==1.0.31                the version edgead's importer was checked against (tests/golden, docs/import.md)
#   openvino, nncf, onnx,       anomalib's own [openvino] extra (export goes torch -> ONNX via dynamo -> OpenVINO IR;
#   onnxscript                  INT8_PTQ / INT8 compression through NNCF), pinned to the versions in edgead's venv
#                               so both tools run the same OpenVINO runtime
# The local package mirror is the only network the machine has; pip's own configuration points at it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PEER_VENV:-$ROOT/.peer-venv/anomalib}"
PY="${PEER_PYTHON:-python3}"
OPENVINO="${PEER_OPENVINO:-openvino==2026.4.1}"
NNCF="${PEER_NNCF:-nncf==3.4.0}"
ONNX="${PEER_ONNX:-onnx==1.23.2}"
ONNXSCRIPT="${PEER_ONNXSCRIPT:-onnxscript==0.7.2}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" \
    "anomalib==2.7.0" "timm==1.0.31" torch torchvision "$OPENVINO" "$NNCF" "$ONNX" "$ONNXSCRIPT"
"$VENV/bin/python" - <<'PY'
from importlib import metadata
for pkg in ("anomalib", "torch", "torchvision", "timm", "openvino", "nncf", "onnx", "onnxscript", "lightning"):
    print(f"{pkg}=={metadata.version(pkg)}")
PY
