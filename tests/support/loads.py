"""A cache load that waits for its gate and counts its runs (single-flight tests)."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class GatedLoad(Generic[T]):
    """Answers ``entry`` once ``gate`` is set; ``calls`` counts how often it was run."""

    def __init__(self, entry: T) -> None:
        self.entry = entry
        self.gate = asyncio.Event()
        self.calls = 0

    async def __call__(self) -> T:
        self.calls += 1
        await self.gate.wait()
        return self.entry
