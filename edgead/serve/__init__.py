"""``edgead serve``: the detector as a KServe v2 / Open Inference Protocol service with an inspection page.

``create_app`` builds the application over any predict callable (``app_for_runner`` over a loaded runner);
``DynamicBatcher`` is the framework-free batching component it uses, reusable by a Ray Serve deployment.
Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart, prometheus_client).
"""

from edgead.serve.app import ServeConfig, app_for_artifact, app_for_runner, create_app
from edgead.serve.batcher import DynamicBatcher, QueueFullError
from edgead.serve.protocol import ModelInfo, ProtocolError

__all__ = ["DynamicBatcher", "ModelInfo", "ProtocolError", "QueueFullError", "ServeConfig", "app_for_artifact",
           "app_for_runner",
           "create_app"]
