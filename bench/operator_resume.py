"""Operator benchmark: resume with N existing JWTKeyMappings, and CR change → NOTIFY latency.

Runs everything locally: the test control plane (kube-apiserver + etcd, see
tests/controlplane/harness.py), a throwaway PostgreSQL, and the operator's kopf
handlers in this process. Prints a small table; figures, not pass/fail.

    .venv/bin/python -P bench/operator_resume.py --count 1000 --samples 100
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder comes first on sys.path; bench modules are loaded
# by path instead (support.modules.load_by_path), so none of them can shadow a library.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    del sys.path[0]

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import kopf
from prometheus_client import REGISTRY

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "controlplane"))
sys.path.insert(1, str(REPO / "tests"))

from harness import ControlPlane  # noqa: E402

from jwtkeymap.core.db import schema  # noqa: E402
from jwtkeymap.core.keys import hash_key  # noqa: E402
from jwtkeymap.core.reconcile.writer import OPERATOR_ACTOR  # noqa: E402
from jwtkeymap.core.settings import load_settings  # noqa: E402
from jwtkeymap.demo.polling import wait_until  # noqa: E402
from jwtkeymap.demo.postgres import ThrowawayPostgres  # noqa: E402
from jwtkeymap.operator.handlers.runtime import Runtime, runtime_of  # noqa: E402
from jwtkeymap.operator.handlers.wiring import register  # noqa: E402
from jwtkeymap.operator.kube import Connection, Kube  # noqa: E402
from support.modules import load_by_path  # noqa: E402

MANIFESTS = load_by_path(REPO / "bench" / "manifests.py", "bench_manifests")
CHECK = load_by_path(REPO / "bench" / "check.py", "bench_check")
manifest_list = MANIFESTS.manifest_list
CHANNEL = "jwtkeymap_invalidate"


def operator_writes() -> float:
    """Mapping rows the in-process operators have written so far (from the metric)."""
    labels = {"actor": OPERATOR_ACTOR}
    return REGISTRY.get_sample_value("jwtkeymap_mapping_writes_total", labels) or 0.0


def install_tenancy(plane: ControlPlane, namespace: str, claim: str) -> None:
    """The policy CRD and a policy letting ``namespace`` map any ``claim`` (secure by default)."""
    crd = "jwtkeymappingpolicies.jwtkeymap.io"
    plane.kubectl("apply", "-f", str(REPO / "crds" / f"{crd}.yaml"), check=True)
    plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}", check=True)
    policy = MANIFESTS.open_policy(namespace, claim)
    plane.kubectl("apply", "-f", "-", input=json.dumps(policy), check=True)


def install_finalizer_policy(plane: ControlPlane) -> None:
    """The chart's MutatingAdmissionPolicy: the API server puts the finalizer on at creation."""
    rendered = plane.helm(
        "template", "bench", str(REPO / "charts" / "jwtkeymap"),
        "--show-only", "templates/finalizerpolicy.yaml", check=True,
    )  # fmt: skip
    plane.kubectl("apply", "-f", "-", input=rendered.stdout, check=True)


async def ready_count(plane: ControlPlane, namespace: str) -> int:
    done = await plane.akubectl(
        "get", "jkm", "-n", namespace, "-o",
        'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        timeout=120,
    )  # fmt: skip
    return done.stdout.split().count("True")


async def snapshot(plane: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    """Every resource by name."""
    done = await plane.akubectl("get", "jkm", "-n", namespace, "-o", "json", timeout=120)
    return {i["metadata"]["name"]: i for i in json.loads(done.stdout)["items"]}


def versions(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    """resourceVersion by name."""
    return {name: obj["metadata"]["resourceVersion"] for name, obj in objects.items()}


def what_changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """Top-level status fields and annotations that differ between two versions."""
    changed = set()
    for part in ("status",):
        old, new = before.get(part) or {}, after.get(part) or {}
        changed |= {f"{part}.{k}" for k in set(old) | set(new) if old.get(k) != new.get(k)}
    old_ann = before["metadata"].get("annotations") or {}
    new_ann = after["metadata"].get("annotations") or {}
    changed |= {
        f"annotation {k}" for k in set(old_ann) | set(new_ann) if old_ann.get(k) != new_ann.get(k)
    }
    if before["metadata"].get("finalizers") != after["metadata"].get("finalizers"):
        changed.add("finalizers")
    return changed


class Operator:
    """The operator's handlers in a kopf task."""

    def __init__(self, plane: ControlPlane, namespace: str, database_url: str) -> None:
        self.plane, self.namespace, self.database_url = plane, namespace, database_url
        self.runtime: Runtime | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        registry = kopf.OperatorRegistry()
        plane = self.plane

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(
                server=plane.server, ca_path=str(plane.ca_file), token=plane.token
            )

        connection = Connection(server=plane.server, token=plane.token, ca_path=plane.ca_file)
        settings = load_settings(None, database_url=self.database_url, db_pool_max_size=8)

        async def connect() -> Kube:
            return await Kube.connect(connection)

        register(registry, settings, connect_kube=connect)
        memo = kopf.Memo()
        kopf_settings = kopf.OperatorSettings()
        kopf_settings.watching.server_timeout = 10
        ready = asyncio.Event()
        self._task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                settings=kopf_settings,
                standalone=True,
                namespaces=[self.namespace],
                stop_flag=self._stop,
                ready_flag=ready,
                memo=memo,
            )
        )
        await asyncio.wait_for(ready.wait(), timeout=60)
        self.runtime = runtime_of(memo)  # opened by the startup handlers, which ran by now

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout=60)


def api_requests(plane: ControlPlane) -> dict[tuple[str, str], float]:
    """The apiserver's request counters, (verb, resource[/subresource]) -> count."""
    text = plane.kubectl("get", "--raw", "/metrics", check=True).stdout
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        what = labels.get("resource", "") + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        key = (labels.get("verb", ""), what)
        counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def requests_between(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], count: int
) -> str:
    """Write requests per resource between two counter readings, by kind."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    writes = {
        f"{verb} {what}": n / count
        for (verb, what), n in sorted(delta.items())
        if verb in {"POST", "PATCH", "PUT", "DELETE"} and n and what != "selfsubjectaccessreviews"
    }
    return ", ".join(f"{k} {v:.2f}" for k, v in writes.items()) or "none"


def rss_mib() -> float:
    """This process's resident memory (the operator runs in it), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(plane: ControlPlane, pg: ThrowawayPostgres) -> dict[str, float]:
    """CPU time (user + system) so far of the operator (this process), the API server, etcd,
    PostgreSQL (the postmaster, its live backends and those it has reaped) and every kubectl
    this process ran: a per-resource cost that a busy machine does not inflate the way it
    does wall time."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    of = CHECK.cpu_seconds
    used = {"operator": of(os.getpid())}
    used.update({name: of(pid) for name, pid in plane.pids.items()})
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    backends = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(CHECK.proc_stat(int(entry.name))[1]) == postmaster:
                    backends += of(int(entry.name))
    used["postgres"] = of(postmaster, reaped=True) + backends
    used["kubectl"] = children.ru_utime + children.ru_stime
    return used


def cpu_per_resource(before: dict[str, float], after: dict[str, float], count: int) -> str:
    return ", ".join(f"{name} {(after[name] - before[name]) / count * 1000:.2f}" for name in before)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(count: int, samples: int, *, finalizer_policy: bool = True) -> None:
    pg = ThrowawayPostgres()
    pg.init()
    pg.start()
    try:
        with ControlPlane() as plane:
            await run(plane, pg, count, samples, finalizer_policy=finalizer_policy)
    finally:
        pg.destroy()


async def run(
    plane: ControlPlane,
    pg: ThrowawayPostgres,
    count: int,
    samples: int,
    *,
    finalizer_policy: bool = True,
) -> None:
    url = pg.url
    conn = await asyncpg.connect(url)
    await schema.migrate(conn, channel=CHANNEL)
    tokens = [hash_key(f"sk-bench-{i}") for i in range(count)]
    await conn.executemany(
        'INSERT INTO "LiteLLM_VerificationToken" (token) VALUES ($1)', [(t,) for t in tokens]
    )
    plane.kubectl(
        "apply", "-f", str(REPO / "crds" / "jwtkeymappings.jwtkeymap.io.yaml"), check=True
    )
    plane.kubectl(
        "wait", "--for=condition=Established", "crd/jwtkeymappings.jwtkeymap.io", check=True
    )
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", namespace, check=True)
    install_tenancy(plane, namespace, "email")
    if finalizer_policy:
        install_finalizer_policy(plane)
    await wait_until(
        lambda: _discoverable(plane, namespace), timeout=30, what="jwtkeymappings served"
    )

    rows: list[tuple[str, str]] = []

    # 1. First run: create N resources, operator reconciles all of them.
    first = Operator(plane, namespace, url)
    await first.start()
    rss_before = rss_mib()
    requests_before = api_requests(plane)
    cpu_before = cpu_seconds(plane, pg)
    started = time.monotonic()
    # kubectl creates the items one POST at a time: allow ~50 ms each on a busy machine.
    created = await plane.akubectl(
        "create", "-f", "-", input=manifest_list(namespace, count, tokens),
        timeout=max(600, count // 20),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    submitted_seconds = time.monotonic() - started
    assert first.runtime is not None

    async def all_reconciled() -> bool:
        reconciler = first.runtime.reconciler if first.runtime else None
        return reconciler is not None and reconciler.reconciles >= count

    # Cheap in-process progress first; listing every object through the API is not.
    await wait_until(all_reconciled, timeout=3600, what="every resource reconciled")
    await wait_until(
        lambda: _all_ready(plane, namespace, count),
        timeout=3600,
        what="all resources Ready",
        interval=1,
    )
    create_seconds = time.monotonic() - started
    create_requests = requests_between(requests_before, api_requests(plane), count)
    create_cpu = cpu_per_resource(cpu_before, cpu_seconds(plane, pg), count)
    # kopf's record of "handled" (status.lastHandled) comes with the Ready condition in one
    # status patch; checked anyway, or the restart would redo the creations it lacks.
    await wait_until(
        lambda: _all_handled(plane, namespace, count),
        timeout=600,
        what="kopf's record of the handled state on every resource",
        interval=1,
    )
    assert first.runtime is not None and first.runtime.reconciler is not None
    first_writes = operator_writes()
    await first.stop()
    rows.append((f"create {count} resources → all Ready", f"{create_seconds:.1f} s"))
    print(f"created: {create_seconds:.1f} s", file=sys.stderr, flush=True)
    rows.append(("  mapping rows written", f"{first_writes:.0f}"))
    rows.append(("  per resource", f"{create_seconds / count * 1000:.1f} ms"))
    rows.append(("  kubectl create returned (all submitted) after", f"{submitted_seconds:.1f} s"))
    rows.append(("  API writes per resource (incl. kubectl's create)", create_requests))
    rows.append(("  CPU per resource, ms", create_cpu))
    rows.append(("  RSS of the benchmark + operator process", f"{rss_mib():.0f} MiB "
                 f"({rss_mib() - rss_before:+.0f} MiB over the create)"))  # fmt: skip

    # 2. Restart: resume every resource; nothing changed, so nothing may be written.
    before = await snapshot(plane, namespace)
    xmin_before = await conn.fetchval('SELECT max(xmin::text::bigint) FROM "LiteLLM_JWTKeyMapping"')
    second = Operator(plane, namespace, url)
    requests_before = api_requests(plane)
    cpu_before = cpu_seconds(plane, pg)
    started = time.monotonic()
    await second.start()
    assert second.runtime is not None

    async def resumed() -> bool:
        reconciler = second.runtime.reconciler if second.runtime else None
        return reconciler is not None and reconciler.reconciles >= count

    await wait_until(resumed, timeout=1800, what="every resource resumed")
    resume_seconds = time.monotonic() - started
    resume_requests = requests_between(requests_before, api_requests(plane), count)
    resume_cpu = cpu_per_resource(cpu_before, cpu_seconds(plane, pg), count)
    ready_after = await ready_count(plane, namespace)
    after = await snapshot(plane, namespace)
    touched_names = [
        name
        for name, obj in after.items()
        if before[name]["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]
    ]
    touched = len(touched_names)
    changes = sorted(set().union(*(what_changed(before[n], after[n]) for n in touched_names)))
    xmin_after = await conn.fetchval('SELECT max(xmin::text::bigint) FROM "LiteLLM_JWTKeyMapping"')
    assert second.runtime.reconciler is not None
    rows.append(
        (f"restart → {count} resumed (all Ready: {ready_after})", f"{resume_seconds:.1f} s")
    )
    rows.append(("  database writes on resume", f"{operator_writes() - first_writes:.0f}"))
    rows.append(("  API writes on resume, per resource", resume_requests))
    rows.append(("  CPU per resource, ms", resume_cpu))
    rows.append(
        ("  mapping rows rewritten (xmin moved)", "no" if xmin_after == xmin_before else "YES")
    )
    detail = f" ({', '.join(changes)})" if changes else ""
    rows.append(("  resources patched on resume", f"{touched}{detail}"))

    # 3. Latency: a spec change through the API → NOTIFY received, once kopf is idle
    # (no resource changed for 3 s), so samples do not queue behind the resume.
    async def settled() -> bool:
        earlier = await snapshot(plane, namespace)
        await asyncio.sleep(3)
        later = await snapshot(plane, namespace)
        return versions(earlier) == versions(later)

    await wait_until(settled, timeout=600, what="the operator to be idle", interval=0)
    heard: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
    listener = await asyncpg.connect(url)
    await listener.add_listener(
        CHANNEL, lambda *a: heard.put_nowait((time.monotonic(), json.loads(a[3])["claim_value"]))
    )
    kube = await Kube.connect(
        Connection(server=plane.server, token=plane.token, ca_path=plane.ca_file)
    )
    latencies: list[float] = []
    try:
        for i in range(samples):
            name = f"user-{i % count:05d}"
            value = f"moved-{i}-{uuid.uuid4().hex[:6]}@bench.example"
            sent = time.monotonic()
            await kube._custom.patch_namespaced_custom_object(  # type: ignore[call-arg]
                "jwtkeymap.io", "v1alpha1", namespace, "jwtkeymappings", name,
                {"spec": {"claim": {"name": "email", "value": value}}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
            while True:
                at, claim_value = await asyncio.wait_for(heard.get(), timeout=120)
                if claim_value == value:
                    latencies.append((at - sent) * 1000)
                    break
    finally:
        await kube.close()
        await listener.close()
        await second.stop()
        await conn.close()
    rows.append(
        (
            f"CR patch → NOTIFY, {samples} samples",
            f"p50 {statistics.median(latencies):.0f} ms, p99 {pct(latencies, 0.99):.0f} ms, "
            f"max {max(latencies):.0f} ms",
        )
    )
    width = max(len(r[0]) for r in rows)
    print(f"\njwtkeymap operator, {count} JWTKeyMappings (kopf standalone, one namespace)")
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


async def _discoverable(plane: ControlPlane, namespace: str) -> bool:
    return (await plane.akubectl("get", "jkm", "-n", namespace)).returncode == 0


async def _all_handled(plane: ControlPlane, namespace: str, count: int) -> bool:
    done = await plane.akubectl("get", "jkm", "-n", namespace, "-o", "json", timeout=120)
    items = json.loads(done.stdout)["items"]
    # status.lastHandled; an operator before it kept kopf's record in an annotation.
    legacy = "kopf.zalando.org/last-handled-configuration"
    return (
        sum(
            1
            for i in items
            if "lastHandled" in i.get("status", {})
            or legacy in i["metadata"].get("annotations", {})
        )
        >= count
    )


async def _all_ready(plane: ControlPlane, namespace: str, count: int) -> bool:
    return await ready_count(plane, namespace) >= count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument(
        "--no-finalizer-policy",
        dest="finalizer_policy",
        action="store_false",
        help="leave out the chart's MutatingAdmissionPolicy (the operator adds the finalizer)",
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(bench(args.count, args.samples, finalizer_policy=args.finalizer_policy))


if __name__ == "__main__":
    main()
