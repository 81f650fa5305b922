"""``CountedSource``: a ``Source`` whose length comes from a cheap count (an index or CSV scan) instead of
reading every record, computed once when first asked."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .sources import Source


@dataclass
class CountedSource(Source):
    """``count()`` returns the number of records (before ``limit``) without parsing them."""
    count: Callable[[], int] | None = None

    def __len__(self) -> int:
        if self.length is None and self.count is not None:
            self.length = int(self.count())
        return super().__len__()
