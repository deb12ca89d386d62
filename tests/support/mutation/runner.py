"""Run every mutant of the core modules against its tests; print and write the scores.

``python -m support.mutation.runner [MODULE ...] [--jobs N] [--write docs/mutation.md]``
(``make mutate`` runs it on every target). Each worker holds a copy of the package in a
temporary directory that comes first on ``PYTHONPATH``, so a mutant is also what any
process a test starts imports; the working tree is never touched. One throwaway
PostgreSQL serves every integration run (each test still gets a database of its own).

The exit status is 1 when a module misses its target or a survivor has no explanation
in ``survivors.toml`` (beside this file).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from support.mutation.operators import Mutant, mutants, mutate
from support.mutation.targets import TARGETS, Target, target

REPO = Path(__file__).resolve().parents[3]
SURVIVORS = Path(__file__).with_name("survivors.toml")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one mutant: ``unit``, ``integration``, ``timeout`` or ``survived``."""

    target: Target
    mutant: Mutant
    verdict: str
    seconds: float

    @property
    def killed(self) -> bool:
        """Tell whether a test noticed the mutant."""
        return self.verdict != "survived"


class Workspace:
    """A private copy of the package that one mutant at a time is written into."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(
            REPO / "operator" / "jwtkeymap",
            root / "jwtkeymap",
            ignore=shutil.ignore_patterns("__pycache__"),
        )

    def check(self, env: dict[str, str]) -> None:
        """Fail unless Python imports the package from this copy (not an installed one)."""
        out = subprocess.run(
            [sys.executable, "-c", "import jwtkeymap; print(jwtkeymap.__file__)"],
            env={**env, "PYTHONPATH": str(self.root)},
            capture_output=True,
            text=True,
            check=True,
        )
        if not out.stdout.strip().startswith(str(self.root)):
            raise SystemExit(f"mutants would not be imported: jwtkeymap is {out.stdout.strip()}")

    def file(self, t: Target) -> Path:
        """The workspace's copy of the target module."""
        return self.root / t.path.removeprefix("operator/")

    @contextmanager
    def holding(self, t: Target, source: str) -> Iterator[None]:
        """Put ``source`` in place of the module for the duration of the block."""
        path = self.file(t)
        original = path.read_text()
        self._forget_bytecode(path)
        path.write_text(source)
        try:
            yield
        finally:
            path.write_text(original)
            self._forget_bytecode(path)

    @staticmethod
    def _forget_bytecode(path: Path) -> None:
        # A .pyc is trusted by mtime and size, which a mutant may share with the original.
        for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            pyc.unlink()


# The pytest runs in flight, each in a session of its own: stopped with the runner.
_RUNNING: set[subprocess.Popen[bytes]] = set()
_STOPPING = threading.Event()


def _stop(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT: end the runs in flight; KeyboardInterrupt then cleans up the rest."""
    _STOPPING.set()
    for proc in list(_RUNNING):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    raise KeyboardInterrupt


def run_tests(
    workspace: Workspace, files: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[str, str]:
    """Run ``files`` against the workspace: ``passed``, ``failed``, ``timeout`` or ``broken``,
    and pytest's output."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "--no-header",
        "--tb=no",
        "-c",
        str(REPO / "pyproject.toml"),
        "--rootdir",
        str(REPO),
        *(str(REPO / f) for f in files),
    ]
    full_env = {**env, "PYTHONPATH": os.pathsep.join([str(workspace.root), str(REPO / "tests")])}
    # cwd is the workspace, so Hypothesis keeps the examples it found for mutants there.
    proc = subprocess.Popen(
        command,
        cwd=workspace.root,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _RUNNING.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout", ""
    finally:
        _RUNNING.discard(proc)
    text = out.decode(errors="replace")
    if proc.returncode == 0:
        return "passed", text
    if _MISSING.search(text) or proc.returncode not in (1, 2, 3):
        # Not the mutant: a dependency vanished (a venv being reinstalled) or pytest misused.
        return "broken", text
    return "failed", text  # failures, a collection error, an internal error


_MISSING = re.compile(r"No module named '(?!jwtkeymap)")
_RETRIES = 3


def run_stage(
    workspace: Workspace, files: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[str, str]:
    """``run_tests``, retried a few times when the environment rather than the code broke."""
    for attempt in range(_RETRIES):
        if _STOPPING.is_set():
            raise RuntimeError("stopped")
        result, output = run_tests(workspace, files, env, timeout)
        if result != "broken":
            return result, output
        time.sleep(10 * (attempt + 1))
    raise RuntimeError(f"the tests cannot run at all (missing module or pytest usage): {files}")


def check_files(t: Target) -> None:
    """Every test file a target names exists: a renamed file must not pass vacuously."""
    missing = [f for f in (*t.unit, *t.integration) if not (REPO / f).is_file()]
    if missing:
        raise SystemExit(f"{t.module}: test files not found: {missing}")


def baseline(t: Target, ws: Workspace, env: dict[str, str], integration: bool) -> float:
    """Run the target's tests on the pristine code; return the per-mutant timeout."""
    started = time.monotonic()
    stages = [t.unit, t.integration] if integration else [t.unit]
    for files in stages:
        if not files:
            continue
        result, output = run_stage(ws, files, env, timeout=900)
        if result != "passed":
            # Name the tests (pytest's -ra summary): a failure that a rerun by hand does not
            # repeat is a flaky test, and only this output says which one it was.
            summary = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
            raise SystemExit(
                f"{t.module}: tests fail without any mutant ({result}): {files}\n"
                + "\n".join(summary or output.splitlines()[-20:])
            )
    spent = time.monotonic() - started
    return 3 * spent + 20


def judge(
    t: Target,
    m: Mutant,
    source: str,
    ws: Workspace,
    env: dict[str, str],
    timeout: float,
    integration: bool,
) -> Outcome:
    """Run one mutant through the unit stage and, if it survives, the integration stage."""
    started = time.monotonic()
    verdict = "survived"
    with ws.holding(t, mutate(source, m.index)):
        stages = [("unit", t.unit)] + ([("integration", t.integration)] if integration else [])
        for name, files in stages:
            if not files:
                continue
            result, _ = run_stage(ws, files, env, timeout)
            if result != "passed":
                verdict = "timeout" if result == "timeout" else name
                break
    return Outcome(t, m, verdict, time.monotonic() - started)


def explanations() -> dict[str, dict[str, str]]:
    """Why each known survivor survives, by module short name and mutant label."""
    with SURVIVORS.open("rb") as f:
        return tomllib.load(f)


def report(
    outcomes: list[Outcome], targets: Sequence[Target], integration: bool
) -> tuple[str, bool]:
    """The Markdown report and whether every target is met and every survivor explained."""
    known = explanations()
    ok = True
    lines = [
        "| module | mutants | killed by unit tests | by integration tests | timeouts "
        "| survived | score | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    details: list[str] = []
    for t in targets:
        mine = [o for o in outcomes if o.target is t]
        count = {v: sum(o.verdict == v for o in mine) for v in ("unit", "integration", "timeout")}
        survivors = [o for o in mine if not o.killed]
        score = (len(mine) - len(survivors)) / len(mine) if mine else 1.0
        ok &= score >= t.minimum
        lines.append(
            f"| `{t.short}` | {len(mine)} | {count['unit']} | {count['integration']} "
            f"| {count['timeout']} | {len(survivors)} | {score:.0%} | {t.minimum:.0%} |"
        )
        if survivors:
            details.append(f"\n### `{t.short}` ({t.path})\n")
            for o in sorted(survivors, key=lambda o: o.mutant.index):
                why = known.get(t.short, {}).get(o.mutant.label)
                if why is None:
                    ok = False
                    why = "**NOT EXPLAINED**: kill it with a test, or explain it in survivors.toml"
                details.append(f"- line {o.mutant.line}, {o.mutant.label}: {why}")
    if not integration:
        lines.append("\n(unit tests only: integration stage skipped)")
    return "\n".join(lines) + "\n" + "\n".join(details) + "\n", ok


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``make mutate``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="short names (claims, cache, ...); default all")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--unit-only", action="store_true", help="skip the integration stage")
    parser.add_argument("--write", type=Path, help="write the report into this Markdown file")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args(argv)
    targets = [target(n) for n in args.modules] if args.modules else list(TARGETS)
    sources = {t: (REPO / t.path).read_text() for t in targets}
    if args.list:
        for t in targets:
            for m in mutants(sources[t]):
                print(f"{t.short} #{m.index} line {m.line}: {m.label}")
        return 0
    for t in targets:
        check_files(t)
    integration = not args.unit_only
    # Explicitly: a runner started in the background of a script would ignore SIGINT.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    with (
        tempfile.TemporaryDirectory(prefix="jwtkeymap-mutation-") as tmp,
        _postgres(integration) as env,
    ):
        workspaces: queue.Queue[Workspace] = queue.Queue()
        for i in range(args.jobs):
            workspaces.put(Workspace(Path(tmp) / f"w{i}"))
        ws = workspaces.get()
        ws.check(env)
        timeouts = {}
        for t in targets:
            timeouts[t] = baseline(t, ws, env, integration)
            print(f"{t.short}: baseline passes; per-mutant timeout {timeouts[t]:.0f} s", flush=True)
        workspaces.put(ws)

        def one(t: Target, m: Mutant) -> Outcome:
            w = workspaces.get()
            try:
                return judge(t, m, sources[t], w, env, timeouts[t], integration)
            finally:
                workspaces.put(w)

        started = time.monotonic()
        jobs = [(t, m) for t in targets for m in mutants(sources[t])]
        outcomes: list[Outcome] = []
        pool = concurrent.futures.ThreadPoolExecutor(args.jobs)
        try:
            for o in pool.map(lambda job: one(*job), jobs):
                outcomes.append(o)
                if not o.killed:
                    print(
                        f"  survived: {o.target.short} line {o.mutant.line}, {o.mutant.label}",
                        flush=True,
                    )
        finally:
            # On ^C, drop the mutants not started yet instead of running them all first.
            pool.shutdown(wait=True, cancel_futures=True)
        print(f"{len(jobs)} mutants in {time.monotonic() - started:.0f} s")
    text, ok = report(outcomes, targets, integration)
    print(text)
    if args.write and (args.modules or args.unit_only):
        print(f"a partial run: {args.write} left as it was")
    elif args.write:
        _write(args.write, text)
    return 0 if ok else 1


@contextmanager
def _postgres(needed: bool) -> Iterator[dict[str, str]]:
    """The environment of every test run: one throwaway PostgreSQL for all of them."""
    env = dict(os.environ)
    if not needed or env.get("JWTKEYMAP_TEST_DATABASE_URL"):
        yield env
        return
    from jwtkeymap.demo.postgres import ThrowawayPostgres

    pg = ThrowawayPostgres()
    try:
        pg.init()
        pg.start()
        yield {**env, "JWTKEYMAP_TEST_DATABASE_URL": pg.url}
    finally:
        pg.destroy()


_BEGIN = "<!-- mutation report: written by `make mutate` -->"
_END = "<!-- end of mutation report -->"


def _write(path: Path, text: str) -> None:
    """Replace the generated part of ``path`` (between its markers), keeping the prose."""
    current = path.read_text() if path.exists() else f"{_BEGIN}\n{_END}\n"
    head, _, rest = current.partition(_BEGIN)
    _, _, tail = rest.partition(_END)
    path.write_text(f"{head}{_BEGIN}\n{text}{_END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
