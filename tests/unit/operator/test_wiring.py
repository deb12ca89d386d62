"""The operator's handlers on a kopf registry: their ids, and the runtime kept in the memo."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

from jwtkeymap.core.settings import load_settings
from jwtkeymap.operator.handlers.runtime import (
    GC_THRESHOLDS,
    Runtime,
    collect_garbage_less_often,
    database,
)
from jwtkeymap.operator.handlers.secrets import watch_referenced
from jwtkeymap.operator.handlers.wiring import register
from jwtkeymap.operator.sidecar.webhook import CONFIG_ENV


def handler_ids(registry: kopf.OperatorRegistry) -> set[str]:
    # kopf keeps one sub-registry per kind of handler; each lists its handlers.
    return {
        str(handler.id)
        for sub in vars(registry).values()
        if hasattr(sub, "get_all_handlers")
        for handler in sub.get_all_handlers()
    }


def test_every_handler_keeps_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # kopf persists progress per id on each resource: a renamed id would re-run handlers.
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv("JWTKEYMAP_METRICS_PORT", raising=False)
    registry = kopf.OperatorRegistry()
    register(registry, load_settings(None))
    assert handler_ids(registry) == {
        "configure", "close", "database", "watch-referenced-secrets", "stop-awaiting-secrets",
        "policies", "namespace_labels",
        "resume", "create", "update", "release",
        "secret-changed",
    }  # fmt: skip


def test_admission_adds_the_webhooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "injection.yaml"
    config.write_text("listenPort: 9000\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("JWTKEYMAP_METRICS_PORT", "9090")
    registry = kopf.OperatorRegistry()
    register(registry, load_settings(None), admission=True)
    assert {"validate-mapping", "inject-pod", "injector-events", "metrics-endpoint"} <= (
        handler_ids(registry)
    )


async def test_no_database_is_a_permanent_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWTKEYMAP_DATABASE_URL", raising=False)

    async def never() -> None:
        raise AssertionError("no API client without a database")

    with pytest.raises(kopf.PermanentError, match="no database configured"):
        await Runtime.open(load_settings(None), never)  # type: ignore[arg-type]


async def test_the_secret_watch_is_narrowed_on_the_server_before_the_runtime_opens() -> None:
    settings = kopf.OperatorSettings()
    with pytest.raises(kopf.TemporaryError, match="runtime is not open"):
        await watch_referenced(memo=kopf.Memo(), settings=settings, max_age=300)
    # The selector goes on kopf's list and watch requests; namespaces and mappings are not narrowed.
    selectors = settings.watching.label_selectors
    assert selectors.collect(kopf.Resource("", "v1", "secrets")) == ["jwtkeymap.io/watched=true"]
    assert selectors.collect(kopf.Resource("", "v1", "namespaces")) == []
    assert selectors.collect(kopf.Resource("jwtkeymap.io", "v1alpha1", "jwtkeymappings")) == []


async def test_the_probe_reports_starting_before_the_runtime_exists() -> None:
    assert await database(memo=kopf.Memo()) == "starting"


@pytest.fixture
def gc_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


@pytest.mark.usefixtures("gc_thresholds")
def test_the_collector_runs_less_often_and_is_never_made_to_run_more() -> None:
    gc.set_threshold(700, 10, 10)  # CPython's default
    collect_garbage_less_often()
    assert gc.get_threshold() == GC_THRESHOLDS
    gc.set_threshold(100_000, 5, 50)  # someone else's higher choice stays
    collect_garbage_less_often()
    assert gc.get_threshold() == (100_000, 20, 50)
