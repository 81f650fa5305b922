"""Errors that name the record or file at fault, so a user can find and fix the input."""
from __future__ import annotations


class EDGError(Exception):
    """Base class of every error EDG raises on purpose."""


class InvalidRecord(EDGError, ValueError):
    """A molecule record is malformed. ``record`` names it (id, file:frame, shard/key)."""

    def __init__(self, record: str, problem: str):
        self.record = record
        self.problem = problem
        super().__init__(f"{record}: {problem}")


class DataSourceError(EDGError, FileNotFoundError):
    """A data source (file, directory, package) is missing or unreadable."""


class ShardError(EDGError, IOError):
    """A shard is truncated, corrupt, or written with an incompatible schema."""


class StorageError(EDGError, ValueError):
    """A storage location (path or fsspec URL) that EDG cannot or must not use: an unknown protocol, a missing
    file-system package, an in-memory URL for output that must outlive the process, or a remote key that would
    land outside the local working copy."""


class DiskFullError(EDGError, OSError):
    """No space (or quota) left while writing a file; the message names the file (and the molecule, where the
    writer knows it)."""

    def __str__(self) -> str:
        return str(self.strerror)
