"""Work-arounds for bugs in the Qt binding, each detected at import time and applied only when present.

PySide6 6.12.0: ``SignalInstance.emit()`` returns ``Py_True`` without taking a reference, so every emit from
Python steals one reference of ``True``; on Python 3.11 (``True`` is not immortal) the process aborts with
"bool_dealloc" once enough emits have happened. qasync's ``call_soon_threadsafe`` emits once per call, which
is once per ``asyncio.to_thread`` completion, so the engine's own thread hops trigger it too. The fix gives the
reference back after each emit: :func:`emit` for our signals and :class:`EventLoop` for qasync's.

The same build also returns ``None`` from every void method without a reference (``VOID_STEALS_NONE``); that
one cannot be patched from Python, so ``app.gui.app.run`` warns with ``BROKEN_BINDING_MESSAGE``.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Final

import qasync
from PySide6.QtCore import QObject, Signal, SignalInstance

__all__ = ["BROKEN_BINDING_MESSAGE", "EMIT_STEALS_TRUE", "VOID_STEALS_NONE", "EventLoop", "emit"]


class _Probe(QObject):
    fired = Signal(int)


def _emit_steals_true() -> bool:
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.fired.emit(0)
    stolen = before - sys.getrefcount(True)
    for _ in range(max(0, stolen)):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
    return stolen == 8


EMIT_STEALS_TRUE: Final = _emit_steals_true()


def _void_steals_none() -> bool:
    """PySide6 6.12.0 on Python 3.11 also returns ``None`` from void methods without a reference: that cannot
    be compensated call by call, only avoided (PySide6-Essentials < 6.12 on Python 3.11)."""
    probe = _Probe()
    before = sys.getrefcount(None)
    for _ in range(8):
        probe.setObjectName("probe")
    stolen = before - sys.getrefcount(None)
    for _ in range(max(0, stolen)):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(None))
    return stolen == 8


VOID_STEALS_NONE: Final = _void_steals_none()
BROKEN_BINDING_MESSAGE: Final = (
    "this PySide6 build drops references to None on this Python (PySide6 6.12.0 with Python 3.11): the app "
    "would abort after a while; install PySide6-Essentials<6.12 (pip install 'PySide6-Essentials<6.12')"
)
_give_back = ctypes.pythonapi.Py_IncRef
_give_back.argtypes = [ctypes.py_object]
_give_back.restype = None


def emit(signal: SignalInstance, *args: Any) -> None:
    """``signal.emit(*args)``, safe on every binding version."""
    result: object = getattr(signal, "emit")(*args)  # noqa: B009 - the stubs say None; 6.12 returns a bool
    if EMIT_STEALS_TRUE and result is True:
        _give_back(True)


class EventLoop(qasync.QEventLoop):  # type: ignore[misc]  # qasync is untyped
    """qasync's loop with the emit fix in ``call_soon_threadsafe`` (called from worker threads)."""

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> None:
        super().call_soon_threadsafe(callback, *args, context=context)
        if EMIT_STEALS_TRUE:
            _give_back(True)
