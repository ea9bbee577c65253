"""Training's errors: one base class, so that a caller (the CLI) catches one type for the package.

Bad configuration values raise a plain ``ValueError`` from the ``*Config`` dataclasses; errors of
a file format stay beside the format (``multidomain.artifact.ArtifactError``).
"""

from __future__ import annotations

__all__ = ["DataError", "RunError", "TrainingError"]


class TrainingError(ValueError):
    """Bad input to training: data, a run directory or a checkpoint."""


class DataError(TrainingError):
    """Bad input data; the message is one line and names the offending file, path or value."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class RunError(TrainingError):
    """A run directory or checkpoint that cannot be used."""
