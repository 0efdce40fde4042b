"""A Bearer token server for the ``token`` registry mode (distribution ``docs/spec/auth/token.md``).

Tokens are JWTs signed RS256 with an RSA key whose self-signed certificate is the registry's
``rootcertbundle``. The JWT header names the key by ``kid`` in libtrust format (SHA-256 of the DER
SubjectPublicKeyInfo, first 240 bits, base32 in 12 colon-separated groups), which is how Distribution 2.8 looks
up keys from its root certificates. Only the standard library and the ``openssl`` CLI (for key + certificate
generation) are used: signing is textbook PKCS#1 v1.5 with Python integers, which is fine for test keys.

Policy: authenticated users (``users`` = {name: password}) get ``pull``, ``push`` and ``delete`` on every
repository and ``*`` on ``registry:catalog:*``; anonymous callers get ``pull`` only on repositories under
``public_prefix``. Wrong credentials get 401. Every request is recorded in :attr:`TokenServer.requests` so tests
can assert on token caching (how many times, which scopes, as whom).

Both the GET form (``?service=&scope=`` with optional Basic auth) and the OAuth2 POST form
(``grant_type=password``) are served; ``oauth_post=False`` makes POST answer 405, like servers that only do GET.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

__all__ = ["RsaPrivateNumbers", "TokenRequest", "TokenServer", "TokenSigner", "grant_actions", "parse_scope"]

DEFAULT_SERVICE = "kitebox-test-registry"
DEFAULT_ISSUER = "kitebox-test-issuer"
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
AUTHENTICATED_REPO_ACTIONS = frozenset({"pull", "push", "delete"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _der_read(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One DER TLV at ``pos``: (tag, content, next position)."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    return tag, data[pos : pos + length], pos + length


@dataclass(frozen=True)
class RsaPrivateNumbers:
    """The parts of a PKCS#1 RSAPrivateKey that signing needs (CRT form: ~3x faster than ``pow(m, d, n)``)."""

    n: int
    p: int
    q: int
    dp: int
    dq: int
    qinv: int

    @classmethod
    def from_pkcs1_der(cls, der: bytes) -> RsaPrivateNumbers:
        """Parse SEQUENCE { version, n, e, d, p, q, dp, dq, qinv }."""
        tag, body, _ = _der_read(der, 0)
        if tag != 0x30:
            raise ValueError("RSA private key: expected a DER SEQUENCE")
        ints: list[int] = []
        pos = 0
        while pos < len(body):
            tag, content, pos = _der_read(body, pos)
            if tag != 0x02:
                raise ValueError("RSA private key: expected DER INTEGERs")
            ints.append(int.from_bytes(content, "big"))
        if len(ints) < 9:
            raise ValueError(f"RSA private key: expected 9 integers, found {len(ints)}")
        _version, n, _e, _d, p, q, dp, dq, qinv = ints[:9]
        return cls(n, p, q, dp, dq, qinv)

    def private_op(self, m: int) -> int:
        m1, m2 = pow(m, self.dp, self.p), pow(m, self.dq, self.q)
        return m2 + (self.qinv * (m1 - m2) % self.p) * self.q


def libtrust_key_id(spki_der: bytes) -> str:
    """Docker libtrust key id: base32(sha256(SPKI DER)[:30]) without padding, in 4-character groups."""
    encoded = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _openssl(*args: str) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


@dataclass(frozen=True)
class TokenSigner:
    """An RSA key + self-signed certificate, able to sign RS256 JWTs."""

    cert_path: Path
    key_path: Path
    key: RsaPrivateNumbers
    key_id: str

    @classmethod
    def generate(cls, directory: Path) -> TokenSigner:
        """Create ``token.key`` / ``token.crt`` in ``directory`` with openssl (~0.1 s)."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = directory / "token.key", directory / "token.crt"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
            "-subj", "/CN=kitebox-test-token-issuer", "-keyout", str(key_path), "-out", str(cert_path),
        )  # fmt: skip
        key = RsaPrivateNumbers.from_pkcs1_der(
            _openssl("rsa", "-in", str(key_path), "-traditional", "-outform", "DER")
        )
        spki = _openssl("pkey", "-in", str(key_path), "-pubout", "-outform", "DER")
        return cls(cert_path, key_path, key, libtrust_key_id(spki))

    def sign(self, claims: dict[str, object]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.key_id}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        k = (self.key.n.bit_length() + 7) // 8
        t = _SHA256_DIGEST_INFO + hashlib.sha256(signing_input.encode()).digest()
        encoded = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t  # EMSA-PKCS1-v1_5
        signature = self.key.private_op(int.from_bytes(encoded, "big")).to_bytes(k, "big")
        return signing_input + "." + _b64url(signature)


def parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]]:
    """``type:name:action[,action]`` -> (type, name, actions); the name may itself contain ':'."""
    first, last = scope.find(":"), scope.rfind(":")
    if first <= 0 or last == first or last == len(scope) - 1:
        raise ValueError(f"malformed scope {scope!r}: expected type:name:action[,action]")
    actions = tuple(a for a in scope[last + 1 :].split(",") if a)
    return scope[:first], scope[first + 1 : last], actions


def grant_actions(scope: str, user: str | None, public_prefix: str) -> dict[str, object] | None:
    """The access entry our policy grants for ``scope`` (None when nothing is granted)."""
    rtype, name, wanted = parse_scope(scope)
    if rtype == "repository":
        allowed = AUTHENTICATED_REPO_ACTIONS if user is not None else (
            frozenset({"pull"}) if name.startswith(public_prefix) else frozenset()
        )
    elif rtype == "registry" and name == "catalog":
        allowed = frozenset({"*"}) if user is not None else frozenset()
    else:
        allowed = frozenset()
    granted = [a for a in wanted if a in allowed]
    return {"type": rtype, "name": name, "actions": granted} if granted else None


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    method: str
    service: str | None
    scopes: tuple[str, ...]
    user: str | None  # the authenticated user; None for anonymous or rejected
    status: int
    grant_type: str | None = None  # POST (OAuth2) requests only


class TokenServer:
    """The token endpoint, served from a background thread on a free 127.0.0.1 port.

    ``expires_in`` is what responses report and (unless ``valid_for`` is set) the token lifetime; set
    ``valid_for`` to e.g. ``-120`` to mint already-expired tokens (the registry allows 60 s of leeway).
    Attributes may be changed while running.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        public_prefix: str = "public/",
        expires_in: int = 300,
        valid_for: int | None = None,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        signer: TokenSigner | None = None,
        oauth_post: bool = True,
    ) -> None:
        self.workdir = workdir
        self.users = dict(users or {})
        self.public_prefix = public_prefix
        self.expires_in = expires_in
        self.valid_for = valid_for
        self.service = service
        self.issuer = issuer
        self.oauth_post = oauth_post
        self._signer = signer
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def signer(self) -> TokenSigner:
        if self._signer is None:
            self._signer = TokenSigner.generate(self.workdir)
        return self._signer

    @property
    def cert_path(self) -> Path:
        return self.signer.cert_path

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("token server is not running: call start() first")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def realm(self) -> str:
        return self.url + "/token"

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def issue_token(self, user: str | None, scopes: list[str] | tuple[str, ...]) -> str:
        """A signed token for ``user`` (None = anonymous) granting what our policy allows for ``scopes``."""
        now = int(time.time())
        lifetime = self.expires_in if self.valid_for is None else self.valid_for
        access = [entry for s in scopes if (entry := grant_actions(s, user, self.public_prefix)) is not None]
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        return self.signer.sign(claims)

    def check_credentials(self, user: str, password: str) -> bool:
        expected = self.users.get(user)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> TokenServer:
        if self._httpd is not None:
            raise RuntimeError(f"token server already running at {self.url}")
        _ = self.signer  # generate the key before serving
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        httpd.daemon_threads = False  # server_close() joins handler threads: nothing leaks past stop()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="token-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


def _make_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: handler threads end with their response

        def log_message(self, format: str, *args: object) -> None:
            """Silence stderr logging; requests are recorded in ``server.requests`` instead."""

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="kitebox-test-token"')
            self.end_headers()
            self.wfile.write(data)

        def _issue(self, method: str, service: str | None, scopes: tuple[str, ...],
                   creds: tuple[str, str] | None, grant_type: str | None) -> None:
            def done(status: int, user: str | None, body: dict[str, object]) -> None:
                server._record(TokenRequest(method, service, scopes, user, status, grant_type))
                self._reply(status, body)

            if creds is not None and not server.check_credentials(*creds):
                denied = {"code": "UNAUTHORIZED", "message": f"incorrect username or password for {creds[0]!r}"}
                return done(401, None, {"errors": [denied]})
            if service != server.service:
                return done(400, None, {"errors": [{"code": "DENIED", "message": f"unknown service {service!r}"}]})
            user = creds[0] if creds is not None else None
            try:
                token = server.issue_token(user, scopes)
            except ValueError as err:
                return done(400, user, {"errors": [{"code": "DENIED", "message": str(err)}]})
            issued_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body: dict[str, object] = {"token": token, "access_token": token,
                                       "expires_in": server.expires_in, "issued_at": issued_at}
            return done(200, user, body)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                return self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": f"no endpoint {url.path}"}]})
            query = urllib.parse.parse_qs(url.query)
            service = query.get("service", [None])[0]
            creds = _basic_credentials(self.headers.get("Authorization"))
            return self._issue("GET", service, tuple(query.get("scope", [])), creds, None)

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode(errors="replace"))
            if url.path != "/token":
                return self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": f"no endpoint {url.path}"}]})
            service = form.get("service", [None])[0]
            scopes = tuple(s for value in form.get("scope", []) for s in value.split(" ") if s)
            grant_type = form.get("grant_type", [None])[0]
            if not server.oauth_post:
                server._record(TokenRequest("POST", service, scopes, None, 405, grant_type))
                return self._reply(405, {"error": "method_not_allowed"})
            if grant_type != "password":
                server._record(TokenRequest("POST", service, scopes, None, 400, grant_type))
                return self._reply(400, {"error": "unsupported_grant_type",
                                         "error_description": f"grant_type {grant_type!r} is not supported"})
            creds = (form.get("username", [""])[0], form.get("password", [""])[0])
            return self._issue("POST", service, scopes, creds, grant_type)

    return Handler
