"""Small asyncio helpers shared by the sync shells."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_task"]


async def cancel_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
