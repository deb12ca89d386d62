"""A child process with a temp dir of its own: spawned, awaited on its port, stopped or killed.

The demo starts a resolver this way; the tests start nginx, Envoy, Redis and the operator
the same way (their launchers subclass :class:`ChildProcess`).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.ports import port_open


class ChildProcess:
    """A child process with a temp dir, stopped with SIGTERM then SIGKILL."""

    name = "process"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"jwtkeymap-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "output.log"

    def _spawn(self, argv: list[str]) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)

    async def _wait_port(self, port: int, timeout: float = 20) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output()}")
            return port_open(port)

        await wait_until(up, timeout=timeout, what=f"{self.name} on port {port}")

    def output(self) -> str:
        """What the process printed (for failure messages)."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def full_output(self) -> str:
        """Everything every run printed."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        """Tell whether the process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (a crash: no cleanup runs), keeping its directory and log."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """Stop the process and delete its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
