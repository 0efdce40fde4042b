"""A real OCI registry for integration tests: Debian's ``docker-registry`` (CNCF Distribution 2.8).

``RegistryServer`` writes a config file into its own work directory, picks a free 127.0.0.1 port, starts
``docker-registry serve`` and waits until ``GET /v2/`` answers. Storage is the filesystem driver under the work
directory with deletes enabled, so tests can exercise manifest/blob deletion. Three auth modes:

* anonymous (default): everything is open;
* ``htpasswd_users``: HTTP Basic against a bcrypt htpasswd file made with ``htpasswd -Bbn``;
* ``token``: Bearer tokens from a :class:`tests.support.tokenserver.TokenServer`, whose certificate is the
  registry's ``rootcertbundle``.

Why a real registry rather than a fake: the engine's client must interoperate with what registries really
answer (challenges, Location headers, Range support, content negotiation), which a fake would only guess.

The process is ours: it is stopped by pid (terminate, wait, kill), never by name. Starting takes ~50 ms.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.support.tokenserver import TokenServer

__all__ = ["REGISTRY_BINARY", "RegistryServer", "RegistryStartError", "free_port", "registry_available"]

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
HTPASSWD_BINARY = "htpasswd"
STARTUP_DEADLINE_S = 10.0
STOP_GRACE_S = 5.0
BIND_ATTEMPTS = 5
LOG_TAIL_LINES = 20


class RegistryStartError(RuntimeError):
    """The registry process could not be started (bad config, port trouble, missing binary)."""


def registry_available() -> bool:
    """True when the ``docker-registry`` binary is installed (tests marked ``registry`` need it)."""
    return REGISTRY_BINARY.is_file()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller must cope with losing a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _htpasswd_line(user: str, password: str) -> str:
    if not user or ":" in user:
        raise ValueError(f"invalid htpasswd user name {user!r}: must be non-empty and contain no ':'")
    out = subprocess.run(
        [HTPASSWD_BINARY, "-Bbn", user, password], check=True, capture_output=True, text=True
    ).stdout
    return out.strip() + "\n"


def _yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(value)


class RegistryServer:
    """One ``docker-registry`` process with its own storage, config and log under ``workdir``.

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``url`` is ``http://127.0.0.1:PORT`` and
    ``host`` is ``127.0.0.1:PORT`` (what image references use).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        htpasswd_users: Mapping[str, str] | None = None,
        token: TokenServer | None = None,
    ) -> None:
        if htpasswd_users is not None and token is not None:
            raise ValueError("registry auth: choose htpasswd_users or token, not both")
        if htpasswd_users is not None and not htpasswd_users:
            raise ValueError("registry auth: htpasswd_users must name at least one user")
        self.workdir = workdir
        self.storage_dir = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self.htpasswd_path = workdir / "htpasswd"
        self._htpasswd_users = dict(htpasswd_users) if htpasswd_users is not None else None
        self._token = token
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("registry is not running: call start() first")
        return self._port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def mode(self) -> str:
        if self._token is not None:
            return "token"
        if self._htpasswd_users is not None:
            return "htpasswd"
        return "anonymous"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> RegistryServer:
        """Start the registry and return once ``GET /v2/`` answers; retries on a lost port race."""
        if self._proc is not None:
            raise RuntimeError(f"registry already running at {self.url}")
        if not registry_available():
            raise RegistryStartError(f"registry binary {REGISTRY_BINARY} not found (install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        if self._htpasswd_users is not None:
            lines = [_htpasswd_line(user, pw) for user, pw in self._htpasswd_users.items()]
            self.htpasswd_path.write_text("".join(lines))
        for _attempt in range(BIND_ATTEMPTS):
            port = free_port()
            self.config_path.write_text(self._config_text(port))
            if self._launch(port):
                return self
        raise RegistryStartError(
            f"registry could not bind a port after {BIND_ATTEMPTS} attempts; log tail:\n{self.log_tail()}"
        )

    def _launch(self, port: int) -> bool:
        """Start on ``port``; True when healthy, False when the port was taken (caller retries)."""
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(REGISTRY_BINARY), "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._proc = proc
        self._port = port
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        listening = f"listening on 127.0.0.1:{port}".encode()
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                new_log = self._log_since(log_start)
                if proc.poll() is not None:
                    self._proc = None
                    self._port = None
                    if b"address already in use" in new_log:
                        return False
                    raise RegistryStartError(
                        f"registry exited with status {proc.returncode} during startup; log tail:\n{self.log_tail()}"
                    )
                # Our own "listening" line first: another server that won the port race must not pass for us.
                if listening in new_log:
                    try:
                        client.get(f"http://127.0.0.1:{port}/v2/")
                        return True
                    except httpx.TransportError:
                        pass
                time.sleep(0.01)  # polling a condition with a deadline, not synchronising on time
        self.stop()
        raise RegistryStartError(
            f"registry did not answer GET /v2/ within {STARTUP_DEADLINE_S}s; log tail:\n{self.log_tail()}"
        )

    def _log_since(self, offset: int) -> bytes:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read()

    def stop(self) -> None:
        """Terminate our process by pid; wait; kill if it does not exit in time. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wipe_storage(self) -> None:
        """Delete everything the registry stored (the process keeps running)."""
        shutil.rmtree(self.storage_dir, ignore_errors=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (tests corrupt or delete it to simulate damage)."""
        algo, hexdigest = digest.split(":", 1)
        return self.storage_dir / "docker/registry/v2/blobs" / algo / hexdigest[:2] / hexdigest / "data"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RegistryServer:
        # ``with RegistryServer(d).start() as reg`` must not start a second process.
        return self if self._proc is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- config ----------------------------------------------------------------------------------------------

    def _config_text(self, port: int) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {_yaml_str(str(self.storage_dir))}",
            "  delete:",
            "    enabled: true",
            "  redirect:",
            "    disable: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{port}",
            "  secret: kitebox-test-secret",
        ]
        if self._htpasswd_users is not None:
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: kitebox-test",
                f"    path: {_yaml_str(str(self.htpasswd_path))}",
            ]
        elif self._token is not None:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {_yaml_str(self._token.realm)}",
                f"    service: {_yaml_str(self._token.service)}",
                f"    issuer: {_yaml_str(self._token.issuer)}",
                f"    rootcertbundle: {_yaml_str(str(self._token.cert_path))}",
            ]
        return "\n".join(lines) + "\n"
