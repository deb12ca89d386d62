"""Secret watch benchmark: the operator's memory and CPU with many Secrets no mapping references.

Runs the test control plane (kube-apiserver + etcd, tests/controlplane/harness.py) and a
throwaway PostgreSQL, creates ``--unrelated`` Secrets of ``--size`` bytes that no mapping
reads and ``--mapped`` JWTKeyMappings whose Secrets are labelled, then starts the operator
as a process of its own twice: once watching every Secret (as before: no label selector)
and once watching the labelled ones only. For each it reports the Secret events received,
the time until every mapping is Ready and the listing is done, the process's RSS when idle
and its peak (VmHWM), and the CPU it spends while ``--churn`` unrelated Secrets change.

    .venv/bin/python -P bench/secrets_watch.py --unrelated 10000
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder comes first on sys.path; bench modules are loaded
# by path instead (support.modules.load_by_path), so none of them can shadow a library.
if sys.path and sys.path[0].rstrip("/").endswith("bench"):
    del sys.path[0]

import argparse
import asyncio
import base64
import json
import os
import signal
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
from jwtkeymap.core.settings import load_settings  # noqa: E402
from jwtkeymap.demo.polling import wait_until  # noqa: E402
from jwtkeymap.demo.postgres import ThrowawayPostgres  # noqa: E402
from jwtkeymap.operator.handlers.runtime import runtime_of  # noqa: E402
from jwtkeymap.operator.handlers.secrets import SECRETS  # noqa: E402
from jwtkeymap.operator.handlers.wiring import register  # noqa: E402
from jwtkeymap.operator.kube import Connection, Kube  # noqa: E402
from jwtkeymap.operator.resource import WATCHED_LABEL  # noqa: E402
from support.modules import load_by_path  # noqa: E402

manifests = load_by_path(REPO / "bench" / "manifests.py", "bench_manifests")
cpu_seconds = load_by_path(REPO / "bench" / "check.py", "bench_check").cpu_seconds
MODES = ("all", "selected")
EVENTS = "jwtkeymap_operator_secret_events_total"
TOKEN_ENV = "JWTKEYMAP_BENCH_API_TOKEN"


# --- the operator process -------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    """The operator for one namespace; prints its counters as a JSON line every 0.2 s."""
    token = os.environ[TOKEN_ENV]
    connection = Connection(server=args.server, token=token, ca_path=Path(args.ca))
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=args.server, ca_path=args.ca, token=token)

    async def connect() -> Kube:
        return await Kube.connect(connection)

    register(registry, load_settings(None, database_url=args.database_url), connect_kube=connect)
    if args.serve == "all":

        @kopf.on.startup(registry=registry)  # after the operator's own: undo its selector
        def watch_every_secret(settings: kopf.OperatorSettings, **_: Any) -> None:
            del settings.watching.label_selectors[SECRETS]

    stop, ready = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    memo = kopf.Memo()
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.watching.server_timeout = 60
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=kopf_settings,
            standalone=True,
            namespaces=[args.namespace],
            stop_flag=stop,
            ready_flag=ready,
            memo=memo,
        )
    )
    await ready.wait()
    reconciler = runtime_of(memo).reconciler
    while not task.done():
        counts = {
            t: REGISTRY.get_sample_value(EVENTS, {"type": t}) or 0
            for t in ("listed", "ADDED", "MODIFIED", "DELETED")
        }
        print(json.dumps({"reconciles": reconciler.reconciles, **counts}), flush=True)
        await asyncio.sleep(0.2)


# --- the driver -------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of a process."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def secret(namespace: str, name: str, payload: str, labels: dict[str, str] | None = None) -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {"apiKey": payload}}


async def apply_list(plane: ControlPlane, items: list[Any], verb: str = "create") -> None:
    for start in range(0, len(items), 500):
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items[start : start + 500]})
        done = await plane.akubectl(verb, "-f", "-", input=body, timeout=600)
        assert done.returncode == 0, done.stderr


class Child:
    """One operator process and its last reported counters."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.last: dict[str, float] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            if line.startswith(b"{"):
                self.last = json.loads(line)

    def events(self) -> float:
        return sum(v for k, v in self.last.items() if k != "reconciles")

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


async def quiet(child: Child, seconds: float) -> None:
    """Wait until the child's event counters have not moved for ``seconds``."""
    last, since = child.events(), time.monotonic()
    while time.monotonic() - since < seconds:
        await asyncio.sleep(0.2)
        if child.events() != last:
            last, since = child.events(), time.monotonic()


async def measure(
    mode: str, plane: ControlPlane, namespace: str, url: str, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable, "-P", __file__, "--serve", mode, "--namespace", namespace,
        "--server", plane.server, "--ca", str(plane.ca_file), "--database-url", url,
    ]  # fmt: skip
    # The token in the environment, not on a command line that `ps` shows.
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), TOKEN_ENV: plane.token}
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, env=env)
    child = Child(proc)
    expected = args.mapped + (args.unrelated if mode == "all" else 0)
    try:
        await wait_until(
            lambda: (
                child.last.get("reconciles", 0) >= args.mapped
                and child.last.get("listed", 0) >= expected
            ),
            timeout=1200,
            what=f"{mode}: every mapping reconciled and every watched Secret listed",
            interval=0.1,
        )
        ready_seconds = time.monotonic() - started
        await quiet(child, 6)  # past kopf's idle timeout for per-object workers (5 s)
        idle = proc_status(proc.pid)
        cpu_before, events_before = cpu_seconds(proc.pid), child.events()
        churn = [
            secret(namespace, f"other-{i:05d}", base64.b64encode(os.urandom(args.size)).decode())
            for i in range(args.churn)
        ]
        churn_started = time.monotonic()
        await apply_list(plane, churn, verb="replace")
        await quiet(child, 6)
        churn_cpu = cpu_seconds(proc.pid) - cpu_before  # includes ~6 s idle, near zero
        after = proc_status(proc.pid)
        return {
            "listed": child.last.get("listed", 0),
            "churn events": child.events() - events_before,
            "ready s": ready_seconds,
            "idle rss": idle["VmRSS"],
            "peak rss": after["VmHWM"],
            "rss after churn": after["VmRSS"],
            "churn cpu": churn_cpu,
            "churn wall": time.monotonic() - churn_started,
        }
    finally:
        await child.stop()


async def bench(args: argparse.Namespace) -> None:
    pg = ThrowawayPostgres()
    pg.init()
    pg.start()
    try:
        with ControlPlane() as plane:
            await run(plane, pg.url, args)
    finally:
        pg.destroy()


async def run(plane: ControlPlane, url: str, args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(url)
    await schema.migrate(conn, channel="jwtkeymap_invalidate")
    keys = [f"sk-bench-{i}" for i in range(args.mapped)]
    await conn.executemany(
        'INSERT INTO "LiteLLM_VerificationToken" (token) VALUES ($1)',
        [(hash_key(k),) for k in keys],
    )
    await conn.close()
    for crd in ("jwtkeymappings", "jwtkeymappingpolicies"):
        plane.kubectl("apply", "-f", str(REPO / "crds" / f"{crd}.jwtkeymap.io.yaml"), check=True)
        plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}.jwtkeymap.io", check=True)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", namespace, check=True)
    policy = manifests.open_policy(namespace, "email")
    plane.kubectl("apply", "-f", "-", input=json.dumps(policy), check=True)

    started = time.monotonic()
    unrelated = [
        secret(namespace, f"other-{i:05d}", base64.b64encode(os.urandom(args.size)).decode())
        for i in range(args.unrelated)
    ]
    await apply_list(plane, unrelated)
    # The mapped Secrets carry the label already, so both runs start from the same state.
    labelled = {WATCHED_LABEL: "true"}
    mapped = [
        secret(namespace, f"key-{i:04d}", base64.b64encode(k.encode()).decode(), labelled)
        for i, k in enumerate(keys)
    ]
    refs = [{"secretRef": {"name": f"key-{i:04d}", "key": "apiKey"}} for i in range(args.mapped)]
    mappings = manifests.mappings(namespace, refs)
    await apply_list(plane, mapped + mappings)
    took = time.monotonic() - started
    print(f"created {args.unrelated} + {args.mapped} Secrets in {took:.0f} s", file=sys.stderr)

    results = {mode: await measure(mode, plane, namespace, url, args) for mode in MODES}
    report(results["all"], results["selected"], args)


def report(a: dict[str, Any], s: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the two runs side by side."""

    def mib(key: str) -> tuple[str, str, str]:
        return (
            f"{a[key] / 1024:.0f} MiB",
            f"{s[key] / 1024:.0f} MiB",
            f"{(a[key] - s[key]) / 1024:+.0f} MiB",
        )

    def count(key: str) -> tuple[str, str, str]:
        return f"{a[key]:.0f}", f"{s[key]:.0f}", ""

    def secs(key: str, digits: int = 1) -> tuple[str, str, str]:
        return f"{a[key]:.{digits}f} s", f"{s[key]:.{digits}f} s", f"{a[key] / s[key]:.1f}x"

    rows = [
        ("Secret events listed at start", *count("listed")),
        ("start → mappings reconciled, listing done", *secs("ready s")),
        ("RSS, idle after start", *mib("idle rss")),
        ("peak RSS (VmHWM)", *mib("peak rss")),
        (f"{args.churn} unrelated Secrets replaced: events", *count("churn events")),
        ("  operator CPU during that churn", *secs("churn cpu", 2)),
        ("RSS after the churn", *mib("rss after churn")),
    ]
    print(
        f"\njwtkeymap operator, {args.unrelated} unrelated Secrets of {args.size} bytes, "
        f"{args.mapped} mappings (one namespace; same run)"
    )
    header = ("", "every Secret", "labelled only", "difference")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        pairs = enumerate(zip(row, widths, strict=True))
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unrelated", type=int, default=10000)
    parser.add_argument("--size", type=int, default=1024, help="bytes of data per Secret")
    parser.add_argument("--mapped", type=int, default=20)
    parser.add_argument("--churn", type=int, default=1000)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    for internal in ("--namespace", "--server", "--ca", "--database-url"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args) if args.serve else bench(args))


if __name__ == "__main__":
    main()
