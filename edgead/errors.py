"""The one root exception of edgead and its few refinements.

Every error a user can cause is an ``EdgeadError`` whose message is one line saying what was expected,
what was found and, where it helps, how to fix it. The CLI prints that line and exits with code 1.
"""

from __future__ import annotations


class EdgeadError(Exception):
    """Root of every error edgead raises on purpose."""


class InputError(EdgeadError):
    """Bad user input: an image, a folder, a batch of the wrong shape or dtype."""


class ArtifactError(EdgeadError):
    """A checkpoint or compiled artifact that is missing, changed, corrupt or from another version."""


class ConfigError(EdgeadError, ValueError):
    """An invalid model or spec setting (family, backbone, norm, size, taps); a ValueError for older callers."""


class OutputError(EdgeadError):
    """An output target edgead refuses to write: it would replace user data, or overlaps the inputs."""


class FidelityError(EdgeadError):
    """An artifact misses its accuracy budget against the reference (``edgead verify``, the compile-time gate)."""


class MissingDependencyError(EdgeadError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, module: str, extra: str, purpose: str = "") -> None:
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(
            f"Python package '{module}' is not installed{what}; install it with: pip install 'edgead[{extra}]'"
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional module or raise ``MissingDependencyError`` naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra, purpose) from exc
