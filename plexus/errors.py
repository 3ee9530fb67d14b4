"""Exceptions of the shared domain (`plexus`).

Hierarchy::

    PlexusError
    ├── SpecError      a task spec is malformed or asks for something impossible
    ├── DatasetError   a dataset cannot be found, read or split as asked
    └── BadTensors     a tensor payload does not match what was expected

Callers catch the family they care about; every message says what was wrong and what to do.
"""

from __future__ import annotations


class PlexusError(Exception):
    """Root of every error raised by the shared domain."""


class SpecError(PlexusError, ValueError):
    """A task spec is malformed, has unknown keys, or asks for impossible values."""


class DatasetError(PlexusError):
    """A dataset is missing, unreadable, or too small for the requested split or shards."""


class BadTensors(PlexusError, ValueError):
    """A tensor payload has wrong names, shapes or dtypes, or holds non-finite values."""
