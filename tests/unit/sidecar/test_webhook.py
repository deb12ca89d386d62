"""The sidecar webhook (kopf side): denials, counters, Events, defaults from the chart's file."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import kopf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from jwtkeymap.core.errors import ConfigError
from jwtkeymap.operator import metrics
from jwtkeymap.operator.events import event_body
from jwtkeymap.operator.kube import Connection
from jwtkeymap.operator.sidecar import webhook
from jwtkeymap.operator.sidecar.defaults import InjectionDefaults, load_defaults
from jwtkeymap.operator.sidecar.plan import INJECT_LABEL, apply, plan

DEFAULTS = InjectionDefaults()


class FakeEvents:
    """Records Events instead of posting them."""

    def __init__(self) -> None:
        self.posted: list[tuple[Mapping[str, Any], str, str, str]] = []

    def post(self, target: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        self.posted.append((target, type, reason, message))


def pod(annotations: dict[str, str] | None = None, *, owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "generateName": "web-5d9-",
        "namespace": "shop",
        "labels": {INJECT_LABEL: "true"},
        "annotations": annotations or {},
    }
    if owned:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-5d9",
                "uid": "u1",
                "controller": True,
            }
        ]
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]},
    }


def count(result: str, reason: str) -> float:
    return float(webhook.INJECTIONS.labels(result, reason)._value.get())


def test_injection_is_counted_and_reported_on_the_owner() -> None:
    events = FakeEvents()
    before = count("injected", "injected")
    mutation = webhook.review(pod(), DEFAULTS, dryrun=False, events=events)
    assert mutation.injected
    assert count("injected", "injected") == before + 1
    [(target, kind, reason, message)] = events.posted
    assert (target["kind"], target["metadata"]["name"], target["metadata"]["namespace"]) == (
        "ReplicaSet",
        "web-5d9",
        "shop",
    )
    assert (kind, reason) == ("Normal", "Injected")
    assert "proxying to 127.0.0.1:80" in message


def test_dry_runs_post_no_events() -> None:
    events = FakeEvents()
    assert webhook.review(pod(), DEFAULTS, dryrun=True, events=events).injected
    assert events.posted == []


def test_skips_are_reported_but_unlabelled_pods_are_not() -> None:
    events = FakeEvents()
    webhook.review(pod({"jwtkeymap.io/status": "injected"}), DEFAULTS, dryrun=False, events=events)
    unlabelled = pod()
    unlabelled["metadata"]["labels"] = {}
    webhook.review(unlabelled, DEFAULTS, dryrun=False, events=events)
    assert [(reason, kind) for _, kind, reason, _ in events.posted] == [
        ("InjectionSkipped", "Normal")
    ]


def test_invalid_annotation_denies_with_a_warning_event() -> None:
    events = FakeEvents()
    before = count("denied", "invalid_setting")
    with pytest.raises(kopf.AdmissionError) as caught:
        webhook.review(pod({"jwtkeymap.io/mode": "mesh"}), DEFAULTS, dryrun=False, events=events)
    assert "jwtkeymap.io/mode: must be one of proxy, ext-authz" in str(caught.value)
    assert caught.value.code == 400
    assert count("denied", "invalid_setting") == before + 1
    [(_, kind, reason, message)] = events.posted
    assert (kind, reason) == ("Warning", "InjectionDenied")
    assert message.startswith("jwtkeymap.io/mode")


def test_bare_pods_without_a_name_get_no_event() -> None:
    events = FakeEvents()
    webhook.review(pod(owned=False), DEFAULTS, dryrun=False, events=events)
    assert events.posted == []
    named = pod(owned=False)
    named["metadata"]["name"] = "debug"
    webhook.review(named, DEFAULTS, dryrun=False, events=events)
    assert events.posted[0][0]["kind"] == "Pod"


def test_events_go_to_the_controlling_owner() -> None:
    p = pod(owned=False)
    p["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "u0"},
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-5d9",
            "uid": "u1",
            "controller": True,
        },
    ]
    assert webhook.owner_of(p, "shop") == {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web-5d9", "uid": "u1", "namespace": "shop"},
    }
    assert webhook.owner_of(pod(owned=False), "shop") is None


async def test_the_handler_patches_the_pod_as_planned() -> None:
    memo = kopf.Memo()
    unused = Connection(server="https://127.0.0.1:9", token="t")  # dry run: no Event is sent
    await webhook.open_injector(memo, defaults=DEFAULTS, connection=unused)
    body = pod()
    patch = kopf.Patch(body=kopf.Body(body))
    await webhook.inject_pod(body=kopf.Body(body), patch=patch, dryrun=True, memo=memo)
    expected = apply(body, plan(body, DEFAULTS))
    assert jsonpatch.apply_patch(body, patch.as_json_patch()) == expected
    await webhook.close_injector(memo)


def test_register_needs_configured_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(webhook.CONFIG_ENV, raising=False)
    assert webhook.register_injector(kopf.OperatorRegistry()) is False
    config = tmp_path / "injection.yaml"
    config.write_text("listenPort: 9000\nnativeSidecar: false\n")
    monkeypatch.setenv(webhook.CONFIG_ENV, str(config))
    assert webhook.register_injector(kopf.OperatorRegistry()) is True


def test_bad_defaults_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "injection.yaml"
    config.write_text("listenPort: 0\n")
    with pytest.raises(ConfigError, match=r"injection.yaml: listenPort: Input should be greater"):
        load_defaults(config)
    with pytest.raises(ConfigError, match="cannot read"):
        load_defaults(tmp_path / "missing.yaml")


def test_event_body_names_the_object() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    target = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
    }
    body = event_body(target, type="Normal", reason="Injected", message="x" * 5000, now=now)
    assert body["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web",
        "namespace": "shop",
        "uid": "u1",
    }
    assert body["metadata"] == {"generateName": "web.", "namespace": "shop"}
    assert len(body["message"]) == 1024
    assert body["lastTimestamp"] == "2026-01-02T03:04:05+00:00"


async def test_metrics_endpoint_exposes_the_injection_counter() -> None:
    app = web.Application()
    app.router.add_get("/metrics", metrics._metrics)
    webhook.INJECTIONS.labels("skipped", "already_injected").inc()
    async with TestClient(TestServer(app)) as http:
        got = await http.get("/metrics")
        text = await got.text()
    assert got.status == 200
    assert 'jwtkeymap_injections_total{reason="already_injected",result="skipped"}' in text
