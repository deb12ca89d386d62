"""Reverse-proxy mode with nginx as its engine: the configuration nginx runs, and nginx as
the resolver's child process.

With ``proxy_engine: nginx`` the resolver still decides every request, but the bytes of
requests and responses go through nginx, which asks the resolver's check (check mode,
``auth_request``) before it forwards each request. The check listens on a Unix socket in
a directory only the resolver's user can enter, so nothing else in the pod (the upstream
included) can ask it for an assertion or a key hash; the public listener is nginx's, and
answers ``/check`` 404 as the resolver's own engine does.

Why: in front of an LLM gateway every request meets a process that has been idle for tens
of milliseconds, and the bytes cost least where the code that carries them is small and
compiled. The resolver's part is the check alone, answered from its memo on its check
lane (bench/README.md, "Session 13: nginx as the resolver's engine").

The upstream receives what the resolver's own engine sends it: the identity headers and
the assertion the check set (a client's copies of those names replaced, or removed when
the check sets none), ``Host`` of the upstream URL, ``X-Forwarded-For``/``-Proto``/
``-Host``, ``Authorization`` unless ``strip_authorization``. A refusal is the JSON error
of the resolver's status and reason. Differences (docs/resolver.md): header names with an
underscore are dropped rather than forwarded, a client's ``x-jwtkeymap-*`` header of a
name the resolver never sets is forwarded (it carries nothing the hook or the identity
contract reads), and nginx's own limits answer an oversized head.

The process: nginx runs in the foreground (``daemon off``) with its master and one
worker. If it exits, the resolver exits non-zero (the container restarts, and nothing
passes meanwhile: the port is closed); if the resolver dies first, the kernel stops nginx
(``PR_SET_PDEATHSIG``). On SIGTERM nginx stops accepting and finishes what is in flight
(SIGQUIT) within ``shutdown_grace_seconds``, while the check keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import shutil
import signal
import ssl
import tempfile
from pathlib import Path
from typing import Final

from yarl import URL

from jwtkeymap.core.errors import ConfigError, JwtKeyMapError
from jwtkeymap.core.settings import Settings
from jwtkeymap.resolver.check import (
    DENIAL_REASON_HEADER,
    HEADER_TOO_LARGE,
    IDENTITY_HEADERS,
    refuse,
)
from jwtkeymap.resolver.handlers import NOT_FOUND_BODY, parse_listen
from jwtkeymap.resolver.limits import PROXY_KEEPALIVE_SECONDS
from jwtkeymap.resolver.proxy import UNREACHABLE
from jwtkeymap.resolver.upstream import CONNECT_TIMEOUT_SECONDS, UPSTREAM_IDLE_SECONDS

log = logging.getLogger("jwtkeymap.resolver.nginx")

# The internal location nginx sends its check subrequests to (never reachable by a client).
CHECK_LOCATION: Final = "/_jwtkeymap_check"
# Paths the resolver answers itself on the public listener, as its own engine does.
OWN_PATHS: Final = ("/.well-known/jwks.json", "/healthz", "/readyz")
START_TIMEOUT_SECONDS: Final = 10.0
_SOCKET_PATH_MAX: Final = 107  # sun_path is 108 bytes on Linux, its last a NUL

# The message of each refusal nginx writes for the check, by status (the reason is the
# check's own, from its denial-reason header).
_REFUSALS: Final = {
    400: "JWT Key Mapping: the request is malformed.",
    401: "JWT Key Mapping: the bearer token is missing or not valid.",
    403: "JWT Key Mapping: this client may not use the gateway.",
    431: HEADER_TOO_LARGE.message,
    503: "JWT Key Mapping: authorization is unavailable, retry.",
}
# The reason of a refusal nginx writes for the check: the check's, or internal_error when
# the check gave none (it could not be reached).
_WHY: Final = "$jwtkeymap_why"
# nginx's temporary files, all in the engine's directory.
_TEMP_KINDS: Final = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class EngineExited(JwtKeyMapError):
    """nginx, the proxy engine, exited while the resolver served."""


def _variable(header: str) -> str:
    """The nginx variable ``auth_request_set`` fills from one of the check's headers."""
    return "$jwtkeymap_" + header.removeprefix("x-jwtkeymap-").replace("-", "_")


def _quoted(body: bytes) -> str:
    """A JSON body as an nginx string (a ``$name`` in it is an nginx variable)."""
    text = body.decode()
    assert "'" not in text and "\\" not in text, text  # the resolver's constant messages
    return f"'{text}'"


def _refusal(status: int, reason: str, message: str) -> str:
    """``check.refuse``'s body, as an nginx string."""
    return _quoted(refuse(status, reason, message).body)


def _host_port(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _seconds(value: float) -> str:
    """A time in nginx's syntax (whole units only)."""
    return f"{round(value * 1000)}ms"


def _listen(listen: str) -> str:
    return _host_port(*parse_listen(listen))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _trusted_certificates() -> str:
    """The CA bundle an ``https`` upstream is verified against: what Python's default
    context reads (``SSL_CERT_FILE`` first), so both engines trust the same CAs."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ConfigError(
        "proxy_engine nginx: no CA bundle found for the https upstream (set SSL_CERT_FILE)"
    )


def render(settings: Settings, *, run_dir: Path, check_socket: Path, as_root: bool) -> str:
    """The nginx configuration of ``settings``'s reverse proxy, asking ``check_socket``."""
    if not settings.upstream:
        raise ConfigError("proxy_engine nginx needs an upstream")
    upstream = URL(settings.upstream)
    if upstream.scheme not in ("http", "https") or not upstream.raw_host:
        raise ConfigError(f"upstream {settings.upstream!r} is not an http:// or https:// URL")
    host = upstream.raw_host
    gateway = _host_port(host, upstream.port)
    host_header = upstream.host_port_subcomponent or host
    prefix = upstream.raw_path.rstrip("/")
    keepalive = settings.keepalive_timeout_seconds or PROXY_KEEPALIVE_SECONDS
    field = max(settings.max_authorization_bytes, settings.max_header_field_bytes)
    buffers = max(2, -(-settings.max_request_head_bytes // field))
    # The check may wait on the database: twice its timeout, and a margin.
    check_timeout = 2 * settings.db_timeout_seconds + 5

    identity = list(IDENTITY_HEADERS)
    sets = "\n".join(
        f"            auth_request_set {_variable(h)} $upstream_http_{h.replace('-', '_')};"
        for h in identity
    )
    forwards = "\n".join(f"            proxy_set_header {h} {_variable(h)};" for h in identity)
    strip = ""
    if settings.strip_authorization:
        strip = '            proxy_set_header Authorization "";\n'
    tls = ""
    if upstream.scheme == "https":
        if _is_address(host):
            raise ConfigError(
                f"proxy_engine nginx: name the https upstream {settings.upstream} by a DNS name "
                "its certificate holds (nginx matches certificates by name, not by IP address)"
            )
        tls = (
            "            proxy_ssl_server_name on;\n"
            f"            proxy_ssl_name {host};\n"
            "            proxy_ssl_verify on;\n"
            "            proxy_ssl_verify_depth 4;\n"
            f"            proxy_ssl_trusted_certificate {_trusted_certificates()};\n"
            "            proxy_ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
    refusals = "\n".join(
        f"            if ($jwtkeymap_status = {status}) {{\n"
        + (
            f"                add_header {DENIAL_REASON_HEADER} {_WHY} always;\n"
            "                add_header Retry-After 1 always;\n"
            if status == 503
            else ""
        )
        + f"                return {status} {_refusal(status, _WHY, message)};\n"
        "            }"
        for status, message in _REFUSALS.items()
    )
    own = "\n".join(
        f"        location = {path} {{\n            proxy_pass http://jwtkeymap_check;\n        }}"
        for path in OWN_PATHS
    )
    user = "user root;\n" if as_root else ""
    reason_variable = "$upstream_http_" + DENIAL_REASON_HEADER.replace("-", "_")
    failed = _refusal(500, _WHY, "JWT Key Mapping: authorization failed.")
    malformed = _refusal(400, "invalid_request", _REFUSALS[400])
    temp = "".join(f"    {kind}_temp_path {run_dir / kind};\n" for kind in _TEMP_KINDS)
    return f"""\
# Rendered by the jwtkeymap resolver (proxy_engine: nginx); rewritten at every start.
{user}daemon off;
worker_processes 1;
pid {run_dir / "nginx.pid"};
# "error": nginx's "info" lines quote the start of an oversized header line (a token).
error_log stderr error;

events {{
    worker_connections {2 * settings.max_connections + 64};
}}

http {{
    # No access log: nothing that could carry a token is written.
    access_log off;
    server_tokens off;
{temp}    client_header_timeout {_seconds(settings.header_timeout_seconds)};
    large_client_header_buffers {buffers} {field};
    keepalive_timeout {_seconds(keepalive)};
    reset_timedout_connection on;

    # The check's reason for a refusal; none when the check itself failed.
    map $jwtkeymap_reason $jwtkeymap_why {{
        "" internal_error;
        default $jwtkeymap_reason;
    }}

    upstream jwtkeymap_check {{
        server unix:{check_socket};
        keepalive 16;
        keepalive_timeout 3000s;
    }}

    upstream jwtkeymap_gateway {{
        server {gateway};
        keepalive 32;
        keepalive_timeout {_seconds(UPSTREAM_IDLE_SECONDS)};
    }}

    server {{
        listen {_listen(settings.listen)};
        # nginx's own refusals of a malformed head, in the resolver's JSON.
        error_page 400 = @jwtkeymap_malformed;
        error_page 494 = @jwtkeymap_too_large;

        # Streamed both ways, as the resolver's own engine does: LLM responses are
        # Server-Sent Events, request bodies are not spooled to disk.
        proxy_http_version 1.1;
        proxy_buffering off;
        proxy_request_buffering off;
        client_max_body_size 0;
        proxy_connect_timeout {_seconds(CONNECT_TIMEOUT_SECONDS)};
        proxy_send_timeout 3600s;
        proxy_read_timeout 3600s;
        proxy_pass_header Server;
        proxy_pass_header Date;

        location / {{
            auth_request {CHECK_LOCATION};
{sets}
            auth_request_set $jwtkeymap_status $upstream_status;
            auth_request_set $jwtkeymap_reason {reason_variable};
            # Every identity header is set from the check: a client's header of the same
            # name never reaches the upstream, and an empty value sends none.
{forwards}
{strip}            proxy_set_header Host "{host_header}";
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
{tls}            error_page 400 401 403 431 500 503 = @jwtkeymap_refused;
            error_page 502 504 = @jwtkeymap_unreachable;
            proxy_pass {upstream.scheme}://jwtkeymap_gateway{prefix}$request_uri;
        }}

        location = {CHECK_LOCATION} {{
            internal;
            proxy_pass http://jwtkeymap_check/check;
            # The check reads Authorization alone (nginx refuses a request with two).
            proxy_pass_request_headers off;
            proxy_set_header Authorization $http_authorization;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout {_seconds(check_timeout)};
        }}

        # The check's answer carries the key hash and the assertion: never a client's.
        location ~ ^/check(/|$) {{
            default_type application/json;
            return 404 {_quoted(NOT_FOUND_BODY)};
        }}

{own}

        location @jwtkeymap_refused {{
            default_type application/json;
            add_header {DENIAL_REASON_HEADER} {_WHY} always;
{refusals}
            return 500 {failed};
        }}

        location @jwtkeymap_malformed {{
            default_type application/json;
            add_header {DENIAL_REASON_HEADER} invalid_request always;
            return 400 {malformed};
        }}

        location @jwtkeymap_too_large {{
            default_type application/json;
            add_header {DENIAL_REASON_HEADER} {HEADER_TOO_LARGE.reason} always;
            return 431 {_quoted(HEADER_TOO_LARGE.body)};
        }}

        location @jwtkeymap_unreachable {{
            default_type application/json;
            add_header {DENIAL_REASON_HEADER} {UNREACHABLE.reason} always;
            return 502 {_quoted(UNREACHABLE.body)};
        }}
    }}
}}
"""


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise ConfigError(f"proxy_engine nginx: {name!r} not found (install nginx)")
    return found


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the resolver dies, nginx stops too.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NginxEngine:
    """nginx relaying ``settings``'s reverse proxy, as a child process of the resolver."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.binary = _binary(settings.nginx_binary)
        self.run_dir = Path(tempfile.mkdtemp(prefix="jwtkeymap-nginx-"))  # mode 0700
        self.check_socket = self.run_dir / "check.sock"
        if len(bytes(self.check_socket)) > _SOCKET_PATH_MAX:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise ConfigError(
                f"proxy_engine nginx: the check's socket path {self.check_socket} is too long "
                "for a Unix socket: point TMPDIR at a shorter directory"
            )
        self._process: asyncio.subprocess.Process | None = None

    def config(self) -> str:
        """The configuration this engine runs."""
        return render(
            self.settings,
            run_dir=self.run_dir,
            check_socket=self.check_socket,
            as_root=os.geteuid() == 0,
        )

    async def start(self, *, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Write the configuration, start nginx, and return once its listener accepts.

        Raise ConfigError when nginx refuses its configuration or exits at start.
        """
        conf = self.run_dir / "nginx.conf"
        conf.write_text(self.config())
        for kind in _TEMP_KINDS:
            (self.run_dir / kind).mkdir(exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            self.binary, "-p", f"{self.run_dir}/", "-e", "stderr", "-c", str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as one (``stop``)
            preexec_fn=_die_with_parent,  # prctl only, before exec
        )  # fmt: skip
        host, port = parse_listen(self.settings.listen)
        probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host  # noqa: S104
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._process.returncode is not None:
                raise ConfigError(
                    f"nginx exited with status {self._process.returncode} at start "
                    "(its message is above)"
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(probe, port)
                writer.close()
                break
            if loop.time() > deadline:
                await self.stop(0)
                raise ConfigError(f"nginx did not listen on {self.settings.listen} in {timeout} s")
            await asyncio.sleep(0.02)
        log.info(
            "nginx relaying",
            extra={"listen": self.settings.listen, "pid": self._process.pid},
        )

    async def wait(self) -> int:
        """Wait for nginx to exit; its status."""
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, grace: float) -> None:
        """Let nginx finish what is in flight (SIGQUIT) for ``grace`` seconds, then stop it
        at once (SIGTERM, then SIGKILL); no worker outlives it."""
        process = self._process
        if process is not None:
            if process.returncode is None:
                if grace > 0 and not await self._signal(signal.SIGQUIT, grace):
                    log.warning("nginx did not finish in time: stopped", extra={"grace": grace})
                if not await self._signal(signal.SIGTERM, 2.0):
                    await self._signal(signal.SIGKILL, None)
            # A master that was killed leaves its workers serving: its group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _signal(self, signum: int, wait: float | None) -> bool:
        """Send ``signum``; tell whether nginx exited within ``wait`` seconds."""
        process = self._process
        assert process is not None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            await asyncio.wait_for(process.wait(), wait)
        except TimeoutError:
            return False
        return True
