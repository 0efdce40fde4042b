"""The runtime spec a start hands to a container's monitor: the one planned at create, naming the compiled seccomp
program's file instead of carrying the profile, which a fresh monitor would spend ~1 ms parsing (see
``RuntimeSpec.seccomp_program``). From memory for a container this engine has just created (:func:`start_spec`),
else read back from the container's ``spec.json`` (:func:`stored_start_spec`)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine import errors

if TYPE_CHECKING:
    from engine.runtime.spec import RuntimeSpec

__all__ = ["start_spec", "stored_start_spec"]


def start_spec(spec: RuntimeSpec) -> RuntimeSpec:
    """What :func:`stored_start_spec` reads back for a container just planned: naming its compiled seccomp program's
    file (the planner has just made sure it is there) instead of carrying the profile."""
    if spec.seccomp is not None and spec.seccomp_program is not None:
        return dataclasses.replace(spec, seccomp=None)
    return spec


def stored_start_spec(bundle: Path) -> RuntimeSpec:
    """The container's runtime spec as its monitor gets it, with the last run's state files cleared: naming the
    compiled seccomp program's file (compiled again if it left the cache) instead of carrying the profile, which a
    fresh monitor would spend ~1 ms parsing (see RuntimeSpec.seccomp_program)."""
    from engine.runtime.seccomp import program_file
    from engine.runtime.spec import RuntimeSpec, decode_document

    for stale in ("exit.json", "state.json"):
        with contextlib.suppress(FileNotFoundError):
            (bundle / stale).unlink()
    path = bundle / "spec.json"
    try:
        raw = decode_document(path.read_bytes())
    except OSError as err:
        raise errors.StoreError(f"{path}: unreadable ({err.strerror})") from err
    if isinstance(raw, dict) and raw.get("seccomp") is not None:
        program = raw.get("seccomp_program")
        if isinstance(program, str) and os.path.isfile(program):
            return RuntimeSpec.from_document({**raw, "seccomp": None})  # the usual case: the profile is not parsed
    spec = RuntimeSpec.from_document(raw)
    if spec.seccomp is None:
        return spec
    program = spec.seccomp_program
    if program is None or not os.path.isfile(program):
        program = program_file(spec.seccomp, spec.seccomp_cache_dir or str(bundle))
    return dataclasses.replace(spec, seccomp=None, seccomp_program=program)
