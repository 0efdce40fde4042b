"""The desktop app's own settings (not the engine's): favourites, registries to browse, unfinished creates.

Stored as JSON in ``$KITEBOX_GUI_CONFIG`` or ``$XDG_CONFIG_HOME/kitebox/gui.json`` (``~/.config/...``), written
atomically on every change. A missing file means defaults; an unreadable one is reported in one line and
replaced by defaults rather than blocking the app.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["GuiSettings", "PendingCreate", "default_settings_path"]


def default_settings_path() -> Path:
    explicit = os.environ.get("KITEBOX_GUI_CONFIG")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "kitebox" / "gui.json"


@dataclass(frozen=True, slots=True)
class PendingCreate:
    """A "Create" whose pull had not finished when the app quit: resumed (pull, create, start) at next start."""

    image: str
    name: str


@dataclass(slots=True)
class GuiSettings:
    path: Path
    favourites: set[str] = field(default_factory=set)
    registries: list[str] = field(default_factory=list)
    pending: list[PendingCreate] = field(default_factory=list)
    load_error: str | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> GuiSettings:
        path = path or default_settings_path()
        settings = cls(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return settings
        except (OSError, ValueError) as err:
            settings.load_error = f"settings file {path} unreadable ({err}); using defaults"
            return settings
        if not isinstance(raw, dict):
            settings.load_error = f"settings file {path}: expected an object; using defaults"
            return settings
        settings.favourites = {str(n) for n in raw.get("favourites", []) if isinstance(n, str)}
        settings.registries = [str(r) for r in raw.get("registries", []) if isinstance(r, str)]
        for item in raw.get("pending", []):
            if isinstance(item, dict) and isinstance(item.get("image"), str) and isinstance(item.get("name"), str):
                settings.pending.append(PendingCreate(item["image"], item["name"]))
        return settings

    def save(self) -> None:
        """Write atomically; failures are swallowed into ``load_error`` (settings must never crash the app)."""
        data = {"favourites": sorted(self.favourites), "registries": self.registries,
                "pending": [asdict(p) for p in self.pending]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.load_error = f"settings file {self.path} not writable ({err.strerror})"

    def toggle_favourite(self, name: str) -> bool:
        if name in self.favourites:
            self.favourites.discard(name)
        else:
            self.favourites.add(name)
        self.save()
        return name in self.favourites

    def rename_favourite(self, old: str, new: str) -> None:
        if old in self.favourites:
            self.favourites.discard(old)
            self.favourites.add(new)
            self.save()

    def add_pending(self, pending: PendingCreate) -> None:
        self.pending = [p for p in self.pending if p.name != pending.name] + [pending]
        self.save()

    def drop_pending(self, name: str) -> None:
        self.pending = [p for p in self.pending if p.name != name]
        self.save()
