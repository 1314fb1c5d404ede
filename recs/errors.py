"""Exceptions raised by the recommendation pipeline."""

from __future__ import annotations


class RecsError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputFileError(RecsError, ValueError):
    """A source file or table is not what it should be (columns, encoding, shape).

    Attributes
    ----------
    path : str
        The file, URL or query that was read.
    column : str or None
        The column at fault, when there is one.
    """

    def __init__(self, path: str, message: str, column: str | None = None) -> None:
        self.path = str(path)
        self.column = column
        super().__init__(f"{self.path}: {message}")


class ValidationGateError(RecsError, ValueError):
    """Too many bad rows, or no usable rows at all: the run stops before publishing.

    Attributes
    ----------
    failures : list of dict
        One entry per failed expectation: ``source``, ``expectation``,
        ``column``, ``rows`` (count) and ``examples``.
    """

    def __init__(self, message: str, failures: list[dict] | None = None) -> None:
        self.failures = failures or []
        super().__init__(message)


class QualityGateError(RecsError):
    """The offline evaluation says this run is clearly worse than it should be."""

    def __init__(self, message: str, metrics: dict | None = None) -> None:
        self.metrics = metrics or {}
        super().__init__(message)


class PublishError(RecsError):
    """Publishing to the warehouse failed; the previous run is still in place."""


class NoPublishedRunError(RecsError):
    """The warehouse holds no published run to read or roll back to."""
