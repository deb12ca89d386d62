"""A real LiteLLM proxy for tests: the pinned PyPI release, on the test PostgreSQL.

``hack/litellm/install.sh`` builds LiteLLM's own virtualenv (``litellm[proxy]`` and
``prisma`` as pinned in ``hack/litellm/requirements.txt``) in the user's cache; this
module finds it, prepares a database with LiteLLM's own migrations, and runs
``litellm`` on a free loopback port with models answered by ``mock_response``.

LiteLLM reaches PostgreSQL through prisma-client-py, whose native query engine
cannot be downloaded on these machines: ``hack/litellm/engine`` stands in for it
with the same engine's WebAssembly build. As there is no schema engine either,
the schema comes from LiteLLM's SQL migrations (``litellm-proxy-extras``) and the
proxy runs with ``DISABLE_SCHEMA_UPDATE=true``.

Everything runs from a temporary directory and is stopped at teardown; nothing
listens on a fixed port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import yaml

import support.litellm as litellm_schema
from jwtkeymap.core.db import schema
from jwtkeymap.demo.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
INSTALL_SCRIPT = REPO_ROOT / "hack" / "litellm" / "install.sh"
SOURCE_ROOT = REPO_ROOT / "operator"
MASTER_KEY = "sk-master-test-0123456789"
# Two models, answered locally. Explicit prices make every request's cost known.
INPUT_COST = 0.001
OUTPUT_COST = 0.002
MODELS = ("fake", "other")
# What LiteLLM's mock answers count, whatever the prompt (so a request's cost is known).
MOCK_PROMPT_TOKENS = 10
MOCK_COMPLETION_TOKENS = 20
REQUEST_COST = MOCK_PROMPT_TOKENS * INPUT_COST + MOCK_COMPLETION_TOKENS * OUTPUT_COST
HOOK = "jwtkeymap.litellm_hook.user_api_key_auth"


class NotInstalled(RuntimeError):
    """``hack/litellm/install.sh`` has not built the LiteLLM install yet."""


@dataclasses.dataclass(frozen=True)
class Install:
    """Where install.sh put LiteLLM, its Python, and the engine stand-in."""

    env: dict[str, str]

    @property
    def python(self) -> str:
        """LiteLLM's own interpreter."""
        return self.env["JWTKEYMAP_LITELLM_PYTHON"]

    @property
    def litellm(self) -> str:
        """The ``litellm`` command of that virtualenv."""
        return self.env["JWTKEYMAP_LITELLM_BIN"]

    def process_env(self, database_url: str, **extra: str) -> dict[str, str]:
        """The environment LiteLLM (or a script using its Prisma client) runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JWTKEYMAP_", "PYTHON"))}
        env.update(
            {
                "JWTKEYMAP_ENGINE_MODULES": self.env["JWTKEYMAP_ENGINE_MODULES"],
                "JWTKEYMAP_ENGINE_SCRIPT": self.env["JWTKEYMAP_ENGINE_SCRIPT"],
                "PRISMA_HOME_DIR": self.env["PRISMA_HOME_DIR"],
                "PRISMA_QUERY_ENGINE_BINARY": self.env["JWTKEYMAP_ENGINE_BINARY"],
                "PRISMA_SCHEMA_ENGINE_BINARY": self.env["JWTKEYMAP_SCHEMA_ENGINE_BINARY"],
                "PRISMA_ENGINES_CHECKSUM_IGNORE_MISSING": "1",
                "DATABASE_URL": database_url,
                "DISABLE_SCHEMA_UPDATE": "true",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "STORE_MODEL_IN_DB": "False",
                "LITELLM_LOG": "ERROR",
                # The hook is imported from this checkout, not from an installed wheel.
                "PYTHONPATH": str(SOURCE_ROOT),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(extra)
        return env


def find_install() -> Install:
    """The LiteLLM install of the current pins; raise NotInstalled when it is missing."""
    out = subprocess.run(
        [str(INSTALL_SCRIPT), "--check", "--print-env"], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise NotInstalled(out.stderr.strip() or f"{INSTALL_SCRIPT} --check failed")
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return Install(env)


async def prepare_database(conn: asyncpg.Connection, channel: str) -> int:
    """LiteLLM's migrations, then jwtkeymap's objects on top; return the migration count."""
    count = await litellm_schema.apply(conn)
    await schema.migrate(conn, channel=channel)
    return count


def proxy_config(*, hook: bool) -> dict[str, Any]:
    """LiteLLM's ``config.yaml``: mock models and, with ``hook``, jwtkeymap's custom auth."""
    models = [
        {
            "model_name": name,
            "litellm_params": {
                "model": "openai/gpt-4o-mini",
                "api_key": "unused",
                "mock_response": f"hello from {name}",
                "input_cost_per_token": INPUT_COST,
                "output_cost_per_token": OUTPUT_COST,
            },
        }
        for name in MODELS
    ]
    # Spend is written in batches; every second keeps the spend tests short.
    general: dict[str, Any] = {"master_key": MASTER_KEY, "proxy_batch_write_at": 1}
    litellm_settings: dict[str, Any] = {}
    if hook:
        general.update(
            {
                "custom_auth": HOOK,
                "custom_auth_settings": {"mode": "on"},
                "custom_auth_run_common_checks": True,
            }
        )
        litellm_settings["enable_post_custom_auth_checks"] = True
    config: dict[str, Any] = {"model_list": models, "general_settings": general}
    if litellm_settings:
        config["litellm_settings"] = litellm_settings
    return config


class LiteLLMProxy:
    """``litellm --config`` on a free loopback port, one worker, in a temporary directory."""

    def __init__(
        self,
        install: Install,
        database_url: str,
        *,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
    ) -> None:
        self.install = install
        self.database_url = database_url
        self.config = config
        self.extra_env = env or {}
        self.dir = Path(tempfile.mkdtemp(prefix="jwtkeymap-litellm-"))
        self.log = self.dir / "litellm.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        """Base URL of the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        """Start and wait until LiteLLM answers its liveness probe (it connects Prisma first)."""
        (self.dir / "config.yaml").write_text(yaml.safe_dump(self.config))
        argv = [
            self.install.litellm,
            "--config", str(self.dir / "config.yaml"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--num_workers", "1",
        ]  # fmt: skip
        started = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.install.process_env(self.database_url, **self.extra_env),
                # Its own process group: the engine stand-in (a grandchild) stops with it.
                start_new_session=True,
            )
        deadline = started + timeout
        while not self._live():
            if self.proc.poll() is not None:
                raise RuntimeError(f"LiteLLM exited at start:\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"LiteLLM not live after {timeout}s:\n{self.output()}")
            time.sleep(0.2)
        self.startup_seconds = time.monotonic() - started

    def _live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def output(self) -> str:
        """The end of what LiteLLM printed (for failure messages)."""
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def stop(self) -> None:
        """Stop LiteLLM and the engine stand-in it started, then delete the directory."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None:
            # Whatever of its group outlived it (the engine stand-in) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_litellm_python(
    install: Install, database_url: str, code: str, *args: str, timeout: float = 120
) -> Any:
    """Run ``code`` with LiteLLM's interpreter (its Prisma client on ``database_url``).

    The script gets ``args`` as ``sys.argv[1:]`` and must print one JSON document
    as its last line of output, which is returned.
    """
    out = subprocess.run(
        [install.python, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=install.process_env(database_url),
        start_new_session=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"LiteLLM script failed ({out.returncode}):\n{out.stderr[-4000:]}")
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])
