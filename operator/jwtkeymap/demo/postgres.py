"""A throwaway PostgreSQL cluster: initdb + pg_ctl in a temp dir, on a free port.

The demo runs on one; so do the tests and the benchmarks, which import it from here.
PostgreSQL refuses to run as root, so when we are root the server runs as an
unprivileged OS user (``postgres`` if it exists, else one we create).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jwtkeymap.demo.ports import free_port

RUN_AS_CANDIDATES = ("postgres", "jwtkeymap-pg")


class PostgresNotInstalled(RuntimeError):
    """The PostgreSQL server binaries are not on this machine."""


def find_bindir() -> Path:
    """Locate the newest PostgreSQL server binaries (initdb, pg_ctl)."""
    env = os.environ.get("PG_BINDIR")
    candidates = [env] if env else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    )
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise PostgresNotInstalled(
        "PostgreSQL server binaries not found: run `make deps` "
        "(or `apt-get install -y postgresql`), or set JWTKEYMAP_TEST_DATABASE_URL"
    )


def _run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in RUN_AS_CANDIDATES:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    name = RUN_AS_CANDIDATES[-1]
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
    )
    return name


class ThrowawayPostgres:
    """A private PostgreSQL server for one test session or one demo run."""

    def __init__(
        self,
        *,
        port: int | None = None,
        listen: tuple[str, ...] = ("127.0.0.1",),
        max_connections: int = 200,
    ) -> None:
        self.bindir = find_bindir()
        self.max_connections = max_connections
        self.port = port or free_port()
        self.listen = listen
        self.user = _run_as_user()
        self.root = Path(tempfile.mkdtemp(prefix="jwtkeymap-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False

    @property
    def url(self) -> str:
        """Admin URL of the ``postgres`` database (trust auth, loopback only)."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """URL of ``database`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        return ["runuser", "-u", self.user, "--", *args]

    def init(self) -> None:
        """Create the cluster (fast settings: no fsync, this data is disposable)."""
        if self.user is not None:
            shutil.chown(self.root, user=self.user)
        subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"),
                "-D", str(self.data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        """Start (or restart) the server on the same port and data."""
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses={','.join(self.listen)} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            f"-c max_connections={self.max_connections}"
        )
        subprocess.run(
            self._cmd(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                "-w", "-s", "-o", opts, "start",
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        self.running = True

    def allow(self, network: str, role: str, password: str) -> str:
        """Let ``role`` (created, with ``password``) log in from ``network`` with SCRAM; its URL
        at the first non-loopback listen address. The server must listen there (``listen``)."""
        self.psql(f"CREATE ROLE \"{role}\" LOGIN SUPERUSER PASSWORD '{password}'")
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all {role} {network} scram-sha-256\n")
        self.psql("SELECT pg_reload_conf()")
        host = next((a for a in self.listen if a != "127.0.0.1"), "127.0.0.1")
        return f"postgresql://{role}:{password}@{host}:{self.port}"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (for outage tests)."""
        if not self.running:
            return
        subprocess.run(
            self._cmd(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-s", "-w", "stop"
            ),
            check=False,
            capture_output=True,
        )
        self.running = False

    def destroy(self) -> None:
        """Stop the server and delete everything."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql as the superuser; return its output."""
        psql = self.bindir / "psql"
        out = subprocess.run(
            [str(psql) if psql.exists() else "psql", "-X", "-q", "-t", "-A",
             "-v", "ON_ERROR_STOP=1", "-d", self.url_for(database), "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        )  # fmt: skip
        return out.stdout


@contextlib.contextmanager
def throwaway_postgres(*, max_connections: int = 200) -> Iterator[ThrowawayPostgres]:
    """Start a private server for the duration of the block."""
    pg = ThrowawayPostgres(max_connections=max_connections)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.destroy()
