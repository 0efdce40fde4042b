"""Running actions in threads at the same moment, for tests of what two threads of one process may race on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

__all__ = ["at_once"]


def at_once(actions: Sequence[Callable[[], object]], rounds: int) -> list[BaseException]:
    """Each action ``rounds`` times in a thread of its own, the threads released together; what they raised."""
    barrier = threading.Barrier(len(actions))
    failures: list[BaseException] = []

    def repeat(action: Callable[[], object]) -> None:
        barrier.wait()
        try:
            for _ in range(rounds):
                action()
        except BaseException as err:  # returned to the test, which asserts there is none
            failures.append(err)

    threads = [threading.Thread(target=repeat, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures
