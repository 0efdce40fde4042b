"""Read-only views of one container: Docker's inspect document and the export tar of its filesystem.

Neither changes the container: :func:`inspect_document` is pure (record + paths -> JSON-ready dict, Docker's
``docker container inspect`` shape), :func:`export_tree` mounts the container's layers read-only in a private
scratch directory and writes the tar atomically (a temporary file renamed over ``out``). The verbs that reach
them (``ContainerManager.inspect_document`` / ``export``) refresh the record first.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.container_create import layers_bottom_up
from engine.containers import ContainerRecord, Status
from engine.tmpnames import temporary_sibling

if TYPE_CHECKING:
    from engine.snapshots import Snapshotter

__all__ = ["export_tree", "inspect_document"]


def inspect_document(
    record: ContainerRecord, *, bundle: Path, log_path: Path, exec_ids: Sequence[str]
) -> dict[str, Any]:
    """``inspect`` of ``record`` whose directory is ``bundle``; ``exec_ids`` are its running exec sessions."""
    state = record.state
    return {
        "Id": record.id,
        "Created": record.created,
        "Path": record.path,
        "Args": record.args,
        "State": {
            "Status": state.status.value, "Running": state.status in (Status.RUNNING, Status.PAUSED,
                                                                      Status.RESTARTING),
            "Paused": state.status == Status.PAUSED, "Restarting": state.status == Status.RESTARTING,
            "OOMKilled": state.oom_killed, "Dead": state.status == Status.DEAD,
            "Pid": state.pid if state.running else 0, "ExitCode": state.exit_code, "Error": state.error,
            "StartedAt": state.started_at, "FinishedAt": state.finished_at,
        },
        "Image": record.image_id,
        "ResolvConfPath": str(bundle / "resolv.conf"),
        "HostnamePath": str(bundle / "hostname"),
        "HostsPath": str(bundle / "hosts"),
        "LogPath": str(log_path),
        "Name": "/" + record.name,
        "RestartCount": state.restart_count,
        "ExecIDs": list(exec_ids) if state.running and exec_ids else None,
        "Driver": "overlay",
        "Platform": "linux",
        "Mounts": record.mounts,
        "Config": record.config,
        "HostConfig": {k: v for k, v in record.host_config.items() if k != "AnonymousVolumes"},
        "NetworkSettings": record.network or {"Networks": {}},
    }


def export_tree(snapshotter: Snapshotter, record: ContainerRecord, bundle: Path, out: Path) -> None:
    """Mount the container's root privately (read-only overlay of its layers) and tar it to ``out``.

    Blocking (run it in a thread). The scratch mount point lives in ``bundle`` and is always unmounted and
    removed; an OSError becomes the engine's error naming the container and ``out``.
    """
    from engine.snapshots import Mount
    from engine.snapshots.mount import mount_all, unmount

    layers = layers_bottom_up(snapshotter, record.snapshot_key)
    upper = snapshotter.upper_dir(record.snapshot_key)
    if snapshotter.whiteout_mode == "delete":
        mounts = [Mount("bind", str(upper), ("rbind", "ro"))]
    else:
        lowers = ":".join(str(p) for p in [upper, *reversed(layers)])
        mounts = [Mount("overlay", "overlay", ("ro", f"lowerdir={lowers}"))]
    target = Path(tempfile.mkdtemp(prefix="export-", dir=bundle))
    tmp_out = temporary_sibling(out)
    try:
        mount_all(mounts, target)
        try:
            with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
                for entry in sorted(os.listdir(target)):
                    tar.add(target / entry, arcname=entry, recursive=True)
        finally:
            unmount(target)
        os.replace(tmp_out, out)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp_out.unlink()
        raise errors.from_oserror(err, f"export of {record.name} to {out}") from err
    finally:
        with contextlib.suppress(OSError):
            target.rmdir()
