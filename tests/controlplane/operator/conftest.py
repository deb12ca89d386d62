"""Fixtures for the operator against the real apiserver: the CRD, a running operator, helpers."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import kopf
import pytest
from harness import ControlPlane

from support.pki import issue_tls

# operator_kit.py sits next to this file (importlib mode puts nothing on sys.path).
sys.path.insert(0, str(Path(__file__).parent))

from operator_kit import OPEN_POLICY, Cluster, RunningOperator, StartOperator, WebhookSetup

from jwtkeymap.core.settings import load_settings
from jwtkeymap.demo.ports import free_port
from jwtkeymap.operator.handlers.runtime import runtime_of
from jwtkeymap.operator.handlers.wiring import register
from jwtkeymap.operator.kube import Connection, Kube

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "jwtkeymappings.jwtkeymap.io.yaml"
POLICY_CRD = REPO / "crds" / "jwtkeymappingpolicies.jwtkeymap.io.yaml"


@pytest.fixture(scope="session")
def jkm_crd(controlplane: ControlPlane) -> str:
    """The JWTKeyMapping CRD and the policy CRD, installed and discoverable, and an open policy."""
    name = "jwtkeymappings.jwtkeymap.io"
    controlplane.kubectl("apply", "-f", str(CRD), "-f", str(POLICY_CRD), check=True)
    for crd in (name, "jwtkeymappingpolicies.jwtkeymap.io"):
        controlplane.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s", check=True
        )
    from harness import poll

    for plural in ("jwtkeymappings", "jwtkeymappingpolicies"):
        poll(
            lambda plural=plural: controlplane.kubectl("get", plural, "-A").returncode == 0,  # type: ignore[misc]
            message=f"{plural} to be discoverable",
        )
    controlplane.kubectl("apply", "-f", "-", input=json.dumps(OPEN_POLICY), check=True)
    return name


@pytest.fixture
def cluster(controlplane: ControlPlane, jkm_crd: str) -> Cluster:
    return Cluster(controlplane)


@pytest.fixture
async def start_operator(controlplane: ControlPlane, jkm_crd: str) -> AsyncIterator[StartOperator]:
    """Start the operator for some namespaces and database; stopped at teardown.

    Each start gets a registry of its own (a restart must not see the first run's handlers).
    """
    started: list[RunningOperator] = []

    async def start(
        namespaces: Sequence[str],
        database_url: str,
        *,
        webhook: WebhookSetup | None = None,
        peering: tuple[str, int] | None = None,
        **overrides: Any,
    ) -> RunningOperator:
        base: dict[str, Any] = {
            "database_url": database_url,
            "drift_interval_seconds": 300,
            "reconcile_backoff_seconds": 0.25,
            "reconcile_backoff_max_seconds": 1,
        }
        base.update(overrides)
        settings = load_settings(None, **base)
        connection = Connection(
            server=controlplane.server, token=controlplane.token, ca_path=controlplane.ca_file
        )

        async def connect() -> Kube:
            return await Kube.connect(connection)

        registry = kopf.OperatorRegistry()

        @kopf.on.login(registry=registry)
        def login(**_: object) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(
                server=controlplane.server,
                ca_path=str(controlplane.ca_file),
                token=controlplane.token,
            )

        register(registry, settings, connect_kube=connect, admission=webhook is not None)
        if webhook is not None:

            @kopf.on.startup(registry=registry)
            def serve_webhook(settings: kopf.OperatorSettings, **_: Any) -> None:
                assert webhook is not None
                settings.admission.server = kopf.WebhookServer(
                    addr="127.0.0.1",
                    port=webhook.port,
                    host="127.0.0.1",
                    certfile=str(webhook.tls.cert_file),
                    pkeyfile=str(webhook.tls.key_file),
                    cafile=str(webhook.tls.ca_file),
                )
                settings.admission.managed = webhook.config_name

        kopf_settings = kopf.OperatorSettings()
        kopf_settings.watching.server_timeout = 10
        stop, ready = asyncio.Event(), asyncio.Event()
        memo = kopf.Memo()
        task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                settings=kopf_settings,
                standalone=peering is None,
                peering_name=peering[0] if peering else None,
                priority=peering[1] if peering else None,
                # Replicas in one process would share kopf's default host@pid identity.
                identity=f"test-{uuid.uuid4().hex[:8]}" if peering else None,  # type: ignore[arg-type]
                namespaces=list(namespaces),
                stop_flag=stop,
                ready_flag=ready,
                memo=memo,
            )
        )
        await asyncio.wait_for(ready.wait(), timeout=30)
        running = RunningOperator(task, stop, settings)
        # Opened by the startup handlers, which kopf ran before raising the ready flag.
        running.runtime = runtime_of(memo)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
def webhook(controlplane: ControlPlane, tmp_path: Path) -> Iterator[WebhookSetup]:
    setup = WebhookSetup(
        tls=issue_tls(tmp_path, "jkm-webhook"),
        port=free_port(),
        config_name=f"jkm-{uuid.uuid4().hex[:8]}.jwtkeymap.io",
    )
    yield setup
    # kopf leaves its managed configuration behind; with failurePolicy Fail it would
    # block every later JWTKeyMapping in this session.
    controlplane.kubectl(
        "delete", "validatingwebhookconfiguration", setup.config_name, "--ignore-not-found"
    )
