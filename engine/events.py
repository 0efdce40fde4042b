"""The engine's event stream: what happened, for front ends to follow.

Front ends subscribe with ``async for event in engine.events(): ...``. Each subscriber has its own bounded
queue; a subscriber that falls too far behind loses the oldest *progress* events (they are superseded by
later ones anyway) but never a lifecycle event. Publishing never blocks and never awaits, so any room may
publish from the event loop thread; threads use ``publish_threadsafe``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Event", "EventBus", "PullProgress"]

EventType = Literal["image", "container", "volume", "network", "pull"]


@dataclass(frozen=True, slots=True)
class Event:
    """A lifecycle event, shaped like Docker's ``{Type, Action, Actor{ID, Attributes}, time}``."""

    type: EventType
    action: str  # "pull", "tag", "untag", "delete", "create", "start", "die", "destroy", ...
    id: str
    attributes: dict[str, str] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class PullProgress:
    """Progress of one pull: a layer's byte count (``layer`` set) or the whole image's (``layer`` None).

    ``phase`` is one of "resolving", "waiting", "downloading", "verifying", "extracting", "done",
    "exists" (already in the store).
    """

    reference: str
    layer: str | None
    phase: str
    current: int
    total: int
    time: float = field(default_factory=time.time)


_MAX_BACKLOG = 10_000


class _Subscriber:
    def __init__(self) -> None:
        self.items: deque[Event | PullProgress] = deque()
        self.wakeup = asyncio.Event()
        self.closed = False

    def push(self, item: Event | PullProgress) -> None:
        if len(self.items) >= _MAX_BACKLOG:
            # Drop the oldest progress record; lifecycle events are kept even past the cap.
            for index, old in enumerate(self.items):
                if isinstance(old, PullProgress):
                    del self.items[index]
                    break
        self.items.append(item)
        self.wakeup.set()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def publish(self, item: Event | PullProgress) -> None:
        for sub in self._subscribers:
            sub.push(item)

    def publish_threadsafe(self, item: Event | PullProgress) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self.publish, item)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def subscribe(self) -> AsyncIterator[Event | PullProgress]:
        sub = _Subscriber()
        self._subscribers.add(sub)
        try:
            while True:
                while sub.items:
                    yield sub.items.popleft()
                if sub.closed:
                    break
                sub.wakeup.clear()
                await sub.wakeup.wait()
        finally:
            self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription (after it has drained what was already published)."""
        for sub in list(self._subscribers):
            sub.closed = True
            sub.wakeup.set()
