"""Containers as records: identity, configuration, and a checked state machine persisted on every change.

A container lives in ``<root>/containers/<id>/``: ``container.json`` (this record, replaced atomically on every
change), ``spec.json`` (the planned runtime spec), the monitor's files and the json-file log. The record holds
the last state the engine knew; the monitor's files are the truth while the container runs, and the engine
reconciles the two whenever it reads a container (see ``Engine``).

States and transitions (Docker's)::

    created --start--> running --(exit)--> exited --start--> running
    running --pause--> paused --unpause--> running
    running --(exit, restart policy)--> restarting --> running
    any --rm--> removing (then gone);   running/paused --(monitor lost)--> dead
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.errors import Conflict, InvalidArgument, NotFound, StoreError, from_oserror
from engine.tmpnames import temporary_sibling

__all__ = [
    "ContainerRecord",
    "ContainerState",
    "ContainerStore",
    "Status",
    "generate_name",
    "validate_name",
]


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class ContainerState:
    status: Status = Status.CREATED
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    oom_killed: bool = False
    started_at: str = "0001-01-01T00:00:00Z"
    finished_at: str = "0001-01-01T00:00:00Z"
    restart_count: int = 0

    # -- the checks every verb makes before acting --------------------------------------------------------------
    def can_start(self) -> bool:
        return self.status in (Status.CREATED, Status.EXITED, Status.DEAD)

    def can_stop(self) -> bool:
        return self.status in (Status.RUNNING, Status.PAUSED, Status.RESTARTING)

    def can_kill(self) -> bool:
        return self.status in (Status.RUNNING, Status.RESTARTING)

    def can_pause(self) -> bool:
        return self.status == Status.RUNNING

    def can_unpause(self) -> bool:
        return self.status == Status.PAUSED

    def can_exec(self) -> bool:
        return self.status == Status.RUNNING

    def can_remove(self, *, force: bool) -> bool:
        return force or self.status in (Status.CREATED, Status.EXITED, Status.DEAD)

    @property
    def running(self) -> bool:
        return self.status in (Status.RUNNING, Status.PAUSED, Status.RESTARTING)


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """Everything Kitebox keeps about one container (Docker's inspect document is derived from it)."""

    id: str
    name: str
    created: str
    image: str  # what the user asked for ("busybox")
    image_id: str  # config digest
    config: dict[str, Any]  # Docker's Config{...}
    host_config: dict[str, Any]  # Docker's HostConfig{...}
    path: str
    args: list[str]
    snapshot_key: str
    state: ContainerState = field(default_factory=ContainerState)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    network: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able data, for saving. Shallow: the nested documents are the record's own (not
        copies: ``asdict``'s deep copy cost ~90 us per save), so the result is for reading only."""
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        data["state"] = {name: getattr(self.state, name) for name in _STATE_FIELDS}
        data["state"]["status"] = self.state.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        state = dict(data.get("state", {}))
        state["status"] = Status(state.get("status", "created"))
        fields_ = {k: v for k, v in data.items() if k != "state"}
        return cls(state=ContainerState(**state), **fields_)

    def with_state(self, **changes: Any) -> ContainerRecord:
        return replace(self, state=replace(self.state, **changes))


_RECORD_FIELDS = tuple(f.name for f in fields(ContainerRecord))
_STATE_FIELDS = tuple(f.name for f in fields(ContainerState))
_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def validate_name(name: str) -> str:
    """Docker's container-name rule; returns the name without a leading slash."""
    if not _NAME.match(name):
        raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name.lstrip("/")


_LEFT = (
    "admiring", "adoring", "affectionate", "agitated", "amazing", "angry", "awesome", "blissful", "bold", "boring",
    "brave", "busy", "charming", "clever", "compassionate", "competent", "condescending", "confident", "cool",
    "cranky", "crazy", "dazzling", "determined", "distracted", "dreamy", "eager", "ecstatic", "elastic", "elated",
    "elegant", "eloquent", "epic", "exciting", "fervent", "festive", "flamboyant", "focused", "friendly", "frosty",
    "funny", "gallant", "gifted", "goofy", "gracious", "great", "happy", "hardcore", "heuristic", "hopeful",
    "hungry", "infallible", "inspiring", "intelligent", "interesting", "jolly", "jovial", "keen", "kind",
    "laughing", "loving", "lucid", "magical", "modest", "musing", "mystifying", "naughty", "nervous", "nice",
    "nifty", "nostalgic", "objective", "optimistic", "peaceful", "pedantic", "pensive", "practical", "priceless",
    "quirky", "quizzical", "recursing", "relaxed", "reverent", "romantic", "sad", "serene", "sharp", "silly",
    "sleepy", "stoic", "strange", "stupefied", "suspicious", "sweet", "tender", "thirsty", "trusting", "unruffled",
    "upbeat", "vibrant", "vigilant", "vigorous", "wizardly", "wonderful", "xenodochial", "youthful", "zealous",
    "zen"
)
_RIGHT = (
    "agnesi", "albattani", "allen", "almeida", "antonelli", "archimedes", "ardinghelli", "aryabhata", "austin",
    "babbage", "banach", "banzai", "bardeen", "bartik", "bassi", "beaver", "bell", "benz", "bhabha", "bhaskara",
    "black", "blackburn", "blackwell", "bohr", "booth", "borg", "bose", "bouman", "boyd", "brahmagupta", "brattain",
    "brown", "buck", "burnell", "cannon", "carson", "cartwright", "carver", "cerf", "chandrasekhar", "chaplygin",
    "chatelet", "chatterjee", "chebyshev", "cohen", "chaum", "clarke", "colden", "cori", "cray", "curie", "darwin",
    "davinci", "dewdney", "dhawan", "diffie", "dijkstra", "dirac", "driscoll", "dubinsky", "easley", "edison",
    "einstein", "elbakyan", "elgamal", "elion", "ellis", "engelbart", "euclid", "euler", "faraday", "feistel",
    "fermat", "fermi", "feynman", "franklin", "gagarin", "galileo", "galois", "ganguly", "gates", "gauss",
    "germain", "goldberg", "goldstine", "goldwasser", "golick", "goodall", "gould", "greider", "grothendieck",
    "haibt", "hamilton", "haslett", "hawking", "hellman", "heisenberg", "hermann", "herschel", "hertz", "heyrovsky",
    "hodgkin", "hofstadter", "hoover", "hopper", "hugle", "hypatia", "ishizaka", "jackson", "jang", "jemison",
    "jennings", "jepsen", "johnson", "joliot", "jones", "kalam", "kapitsa", "kare", "keldysh", "keller", "kepler",
    "khayyam", "khorana", "kilby", "kirch", "knuth", "kowalevski", "lalande", "lamarr", "lamport", "leakey",
    "leavitt", "lederberg", "lehmann", "lewin", "lichterman", "liskov", "lovelace", "lumiere", "mahavira",
    "margulis", "matsumoto", "maxwell", "mayer", "mccarthy", "mcclintock", "mclaren", "mclean", "mcnulty",
    "meitner", "mendel", "mendeleev", "meninsky", "merkle", "mestorf", "mirzakhani", "montalcini", "moore", "morse",
    "moser", "murdock", "napier", "nash", "neumann", "newton", "nightingale", "nobel", "noether", "northcutt",
    "noyce", "panini", "pare", "pascal", "pasteur", "payne", "perlman", "pike", "poincare", "poitras",
    "proskuriakova", "ptolemy", "raman", "ramanujan", "rhodes", "ride", "ritchie", "robinson", "roentgen",
    "rosalind", "rubin", "saha", "sammet", "sanderson", "satoshi", "shamir", "shannon", "shaw", "shirley",
    "shockley", "shtern", "sinoussi", "snyder", "solomon", "spence", "stonebraker", "sutherland", "swanson",
    "swartz", "swirles", "taussig", "tesla", "tharp", "thompson", "torvalds", "tu", "turing", "varahamihira",
    "vaughan", "villani", "visvesvaraya", "volhard", "wescoff", "wilbur", "wiles", "williams", "williamson",
    "wilson", "wing", "wozniak", "wright", "wu", "yalow", "yonath", "zhukovsky"
)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """Which file version a stat describes. Saves replace the file: a new inode each time, and an inode number is
    only reused once its file is gone, two saves later; that save's mtime (a coarse clock tick) or size tells it
    apart unless both match. Not ctime: the rename changes it."""
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def generate_name(taken: set[str]) -> str:
    """Docker-style ``adjective_scientist`` name not in ``taken`` (a digit is appended on collision)."""
    for attempt in range(64):
        name = f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"
        if attempt >= 8:
            name += str(secrets.randbelow(10))
        if name not in taken and name != "boring_wozniak":  # Docker's own joke: Steve Wozniak is not boring
            return name
    return f"kitebox_{secrets.token_hex(6)}"


class ContainerStore:
    """Container records on disk, one directory per container, written atomically.

    Name uniqueness is enforced under an exclusive lock file so two processes (app and CLI) cannot both
    claim a name.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # What this store saved last per container, with the identity of the file it wrote (see recent()).
        self._saved: dict[str, tuple[tuple[int, int, int, int], ContainerRecord]] = {}
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o711)
        except OSError as err:
            raise from_oserror(err, f"container store {root}") from err

    def dir(self, container_id: str) -> Path:
        return self.root / container_id

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl

        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def new_id(self) -> str:
        while True:
            candidate = secrets.token_hex(32)
            if not candidate[:12].isdigit() and not self.dir(candidate).exists():
                return candidate

    def save(self, record: ContainerRecord, *, sync: bool = True) -> None:
        """Persist ``record`` atomically (write a temp file, fsync, rename).

        ``sync=False`` skips the fsync, for run-state changes (running, exited) that the monitors' own files and
        the boot id reconcile after a host crash anyway, for ``removing``, and for an ``--rm`` container's
        record: an fsync waits for the disk's other writes (~1-5 ms on the start path).

        The container's directory must exist (create makes it): a save racing a removal raises ``NotFound``
        instead of bringing a removed container's directory back. The temporary file is named per thread, as
        two threads of one process may save the same container at once (a refresh and a removal)."""
        directory = self.dir(record.id)
        tmp = temporary_sibling(directory / "container.json")
        try:
            with open(tmp, "w") as handle:
                json.dump(record.to_json(), handle, indent=1)
                handle.flush()
                if sync:
                    os.fsync(handle.fileno())
                written = _identity(os.fstat(handle.fileno()))
            os.replace(tmp, directory / "container.json")
            self._saved[record.id] = (written, record)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(err, FileNotFoundError):
                raise NotFound(f"No such container: {record.id}") from err
            raise from_oserror(err, f"container {record.name}") from err

    def recent(self, container_id: str) -> ContainerRecord | None:
        """The record this store last saved for ``container_id``, when its container.json is still the file that
        save wrote (one stat, no read or parse: cheap enough for the event loop, so a start right after a create
        and a wait right after a start skip a thread hop); None otherwise (not saved here, or saved since by
        anyone else, or removed)."""
        known = self._saved.get(container_id)
        if known is None:
            return None
        try:
            current = _identity(os.stat(self.dir(container_id) / "container.json"))
        except OSError:
            return None
        return known[1] if current == known[0] else None

    def load(self, container_id: str) -> ContainerRecord:
        path = self.dir(container_id) / "container.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise NotFound(f"No such container: {container_id}") from err
        except (OSError, ValueError) as err:
            raise StoreError(f"container {container_id}: unreadable record ({err})") from err
        return ContainerRecord.from_json(data)

    def all(self) -> list[ContainerRecord]:
        records = []
        try:
            entries = sorted(os.listdir(self.root))
        except OSError as err:
            raise from_oserror(err, f"container store {self.root}") from err
        for entry in entries:
            if len(entry) == 64 and (self.root / entry / "container.json").exists():
                with contextlib.suppress(NotFound):
                    records.append(self.load(entry))
            elif entry.endswith(".removing"):  # a removal that crashed half-way (or one in progress: harmless)
                import shutil

                shutil.rmtree(self.root / entry, ignore_errors=True)
        return records

    def find(self, text: str) -> ContainerRecord:
        """By full id, exact name, or unique id prefix (Docker's precedence: daemon.GetContainer)."""
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            # A full id (what the engine itself passes around): one file, not a scan of every record.
            with contextlib.suppress(NotFound):
                return self.load(text)
        name = text.lstrip("/")
        records = self.all()
        for record in records:
            if record.name == name or record.id == text:
                return record
        matches = [r for r in records if r.id.startswith(text)] if text else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise Conflict(f"multiple containers found with provided prefix: {text}")
        raise NotFound(f"No such container: {text}")

    def check_name_free(self, name: str, records: list[ContainerRecord] | None = None, *,
                        ignore_id: str | None = None) -> None:
        """Conflict when ``name`` belongs to another container (of ``records``, default: all of them)."""
        for record in self.all() if records is None else records:
            if record.name == name and record.id != ignore_id:
                raise Conflict(
                    f'Conflict. The container name "/{name}" is already in use by container "{record.id}". '
                    "You have to remove (or rename) that container to be able to reuse that name."
                )

    def delete(self, container_id: str) -> None:
        import shutil

        self._saved.pop(container_id, None)
        # Renamed away first: a save racing the removal then fails to open its temporary file (NotFound) instead
        # of adding a file under rmtree's feet (ENOTEMPTY). A crash's leftover is swept by all().
        doomed = self.root / f".{container_id}.{threading.get_native_id()}.removing"
        try:
            os.rename(self.dir(container_id), doomed)
            shutil.rmtree(doomed)
        except FileNotFoundError:
            return
        except OSError as err:
            raise from_oserror(err, f"container {container_id}") from err
