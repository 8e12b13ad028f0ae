"""Work split into short batches: each batch is one short write transaction, so that an app's
``create()`` never waits behind a long one (retention, custody hand-overs, lease releases)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), in order (``itertools.batched``, Python 3.12)."""
    if size < 1:
        raise ValueError(f"batch size {size}: must be at least 1")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
