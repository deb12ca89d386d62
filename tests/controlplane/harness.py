"""A real Kubernetes control plane for tests: etcd plus kube-apiserver, nothing else.

This is what controller-runtime's envtest does for Go operators: no kubelet, no scheduler and no
controllers, so Pods stay Pending, namespaces never finish terminating and no ``default``
ServiceAccount appears. Everything the API server does itself (schema and CEL validation,
admission webhooks, RBAC, server-side dry runs) is real.

The binaries come from ``hack/envtest/install.sh``, which is the one place that knows where they
live. Use :class:`ControlPlane` as a context manager in tests, or run this file for manual use::

    python tests/controlplane/harness.py up     # prints `export KUBECONFIG=...`
    python tests/controlplane/harness.py down
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

# Run as a script (`make controlplane-up`) or loaded by a benchmark or tests/node, the
# tests' helper package beside this directory is importable too.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jwtkeymap.demo.ports import free_port
from support.pki import TLSFiles, issue_client_cert, issue_tls, pem_key

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "hack" / "envtest" / "install.sh"
STATE_DIR = REPO_ROOT / ".controlplane"

ADMIN_USER = "jwtkeymap-test-admin"
WORKDIR_PREFIX = "jwtkeymap-controlplane-"
OWNER_FILE = "owner.pid"
LOOPBACK = "127.0.0.1"
# Service addresses come from RFC 2544's benchmarking range (pods use 198.18.0.0/16, tests/node):
# nothing of ours lives in 10/8, 172.16/12 or 192.168/16.
SERVICE_CIDR = "198.19.0.0/16"
KUBERNETES_SERVICE_IP = "198.19.0.1"
# The identities of a node's components; each has its bootstrap RBAC role already.
NODE_COMPONENTS = ("system:kube-controller-manager", "system:kube-scheduler", "system:kube-proxy")
KUBERNETES_SERVICE_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
TESTDATA = Path(__file__).parent / "testdata"
POLL_INTERVAL = 0.2

T = TypeVar("T")


class BinariesMissing(RuntimeError):
    """The control-plane binaries are not installed."""


class ControlPlaneError(RuntimeError):
    """etcd or kube-apiserver did not start, or stopped unexpectedly."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Paths of the four programs the control plane needs, and of the other projects' CRDs
    whose kinds the chart renders (``hack/envtest/install.sh``)."""

    kube_apiserver: Path
    etcd: Path
    kubectl: Path
    helm: Path
    k8s_version: str
    foreign_crds: Path


def find_binaries() -> Binaries:
    """Ask the install script (without letting it build anything) where the binaries are."""
    proc = subprocess.run(
        [str(INSTALL_SCRIPT), "--check", "--print-env"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BinariesMissing(proc.stderr.strip())
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Binaries(
        kube_apiserver=Path(found["JWTKEYMAP_KUBE_APISERVER"]),
        etcd=Path(found["JWTKEYMAP_ETCD"]),
        kubectl=Path(found["JWTKEYMAP_KUBECTL"]),
        helm=Path(found["JWTKEYMAP_HELM"]),
        k8s_version=found["JWTKEYMAP_K8S_VERSION"],
        foreign_crds=Path(found["JWTKEYMAP_FOREIGN_CRDS"]),
    )


def poll(condition: Callable[[], T], *, timeout: float = 30.0, message: str = "the condition") -> T:
    """Call ``condition`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {message}; last: {result!r}")
        time.sleep(POLL_INTERVAL)
    return result


async def apoll(
    condition: Callable[[], Awaitable[T]], *, timeout: float = 30.0, message: str = "the condition"
) -> T:
    """Await ``condition`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := await condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {message}; last: {result!r}")
        await asyncio.sleep(POLL_INTERVAL)
    return result


# --- processes ------------------------------------------------------------------------------


def _without_proxies(env: Mapping[str, str]) -> dict[str, str]:
    # A proxy from the developer's shell would capture the apiserver's calls to loopback webhooks.
    clean = {
        k: v for k, v in env.items() if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    clean["NO_PROXY"] = clean["no_proxy"] = "127.0.0.1,localhost"
    return clean


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test process dies hard, the kernel kills the child too,
    # so a crashed pytest leaves no orphaned etcd or apiserver behind.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _opener(ca_file: Path | None) -> urllib.request.OpenerDirector:
    # No proxies: these are loopback health checks.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ca_file is not None:
        handlers.append(
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(ca_file)))
        )
    return urllib.request.build_opener(*handlers)


def _sweep_abandoned_workdirs() -> None:
    # A test process killed with SIGKILL takes its children along (see _die_with_parent) but
    # cannot delete its workdir; the next run does, once the owner is surely gone.
    for workdir in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((workdir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{owner}").exists():
            shutil.rmtree(workdir, ignore_errors=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with an admin token and a kubeconfig.

    Attributes available after :meth:`start`: ``server`` (URL), ``ca_file``, ``token`` (admin, in
    ``system:masters``), ``kubeconfig`` (path), ``workdir``, ``startup_seconds``.

    By default (``attached``) the children die with the thread that started them, so start it
    from a long-lived thread (the main one), not from ``asyncio.to_thread``.
    """

    def __init__(
        self,
        binaries: Binaries | None = None,
        *,
        workdir: Path | None = None,
        attached: bool = True,
        ready_timeout: float = 60.0,
        extra_apiserver_args: Sequence[str] = (),
        address: str = LOOPBACK,
        node_name: str | None = None,
    ) -> None:
        self.binaries = binaries or find_binaries()
        # With a node (tests/node), the apiserver serves on an address pods reach, keeps the
        # `kubernetes` Service's endpoints, admits ServiceAccounts, authorizes nodes and can
        # reach the kubelet; each component gets its own identity (``component_tokens``).
        self.address = address
        self.node_name = node_name
        self.component_tokens: dict[str, str] = {}
        self.tls: TLSFiles | None = None
        self._requested_workdir = workdir
        self._attached = attached
        self._ready_timeout = ready_timeout
        self._extra_args = list(extra_apiserver_args)
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self.workdir = Path()
        self.server = ""
        self.token = ""
        self.ca_file = Path()
        self.kubeconfig = Path()
        self.etcd_url = ""
        self.startup_seconds = 0.0

    # -- lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd and kube-apiserver and return once /readyz says ok."""
        started = time.monotonic()
        if self._requested_workdir is None:
            _sweep_abandoned_workdirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        else:
            self.workdir = self._requested_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(started)
        except BaseException:
            self.stop()
            raise

    def _start(self, started: float) -> None:
        pki = self.workdir / "pki"
        hosts = [LOOPBACK, "localhost"]
        if self.node_name:
            hosts += [self.address, KUBERNETES_SERVICE_IP, *KUBERNETES_SERVICE_NAMES]
        tls = self.tls = issue_tls(pki, "kube-apiserver", hosts=hosts)
        self.ca_file = tls.ca_file
        self.token = secrets.token_urlsafe(24)
        users = [(self.token, ADMIN_USER, "system:masters")]
        if self.node_name:
            self.component_tokens = {
                user: secrets.token_urlsafe(24)
                for user in (*NODE_COMPONENTS, f"system:node:{self.node_name}")
            }
            users += [
                (token, user, "system:nodes" if user.startswith("system:node:") else "")
                for user, token in self.component_tokens.items()
            ]
        tokens = pki / "tokens.csv"
        tokens.write_text(
            "".join(f"{t},{u},{u}" + (f',"{g}"' if g else "") + "\n" for t, u, g in users)
        )
        tokens.chmod(0o600)
        sa_key = pki / "service-account.key"
        sa_key.write_bytes(pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        sa_key.chmod(0o600)

        etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port()
        self.etcd_url = f"http://{LOOPBACK}:{etcd_port}"
        peer_url = f"http://{LOOPBACK}:{etcd_peer_port}"
        self.server = f"https://{self.address}:{api_port}"

        self._etcd = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=jwtkeymap-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=jwtkeymap-test={peer_url}",
                "--unsafe-no-fsync=true",  # test data: durability is not wanted, speed is
                "--log-level=warn",
            ],
        )
        # The apiserver would retry etcd on its own, but its log would then open with a page of
        # connection errors that hide the real ones; etcd is up in a fraction of a second.
        self._wait_healthy("etcd", f"{self.etcd_url}/health", _opener(None), headers={})
        self._apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.address}",
                f"--secure-port={api_port}",
                f"--tls-cert-file={tls.cert_file}",
                f"--tls-private-key-file={tls.key_file}",
                f"--token-auth-file={tokens}",
                "--allow-privileged=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                *(self._node_args(pki, tls) if self.node_name else self._envtest_args()),
                "--profiling=false",
                "--v=1",
                *self._extra_args,
            ],
        )
        self._write_kubeconfig()
        self._wait_healthy(
            "kube-apiserver",
            f"{self.server}/readyz",
            _opener(self.ca_file),
            headers={"Authorization": f"Bearer {self.token}"},
        )
        self.startup_seconds = time.monotonic() - started

    @staticmethod
    def _envtest_args() -> list[str]:
        return [
            "--authorization-mode=RBAC",
            # Without a kube-controller-manager nobody creates `default` ServiceAccounts,
            # and this admission plugin would reject every Pod that needs one.
            "--disable-admission-plugins=ServiceAccount",
            # Nothing serves the `kubernetes` Service endpoints here, and a loopback advertise
            # address is rejected by the reconcilers: switch them off.
            "--endpoint-reconciler-type=none",
        ]

    def _node_args(self, pki: Path, tls: TLSFiles) -> list[str]:
        # The apiserver reaches kubelets (logs, exec) with a client certificate of its CA.
        cert, key = issue_client_cert(
            tls, "kube-apiserver-kubelet-client", groups=["system:masters"]
        )
        return [
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--advertise-address={self.address}",
            f"--kubelet-client-certificate={cert}",
            f"--kubelet-client-key={key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def component_kubeconfig(self, user: str) -> Path:
        """A kubeconfig for a component's identity (``system:kube-proxy`` …), next to the admin one."""
        path = self.workdir / f"kubeconfig-{user.replace(':', '-')}"
        path.write_text(json.dumps(self._kubeconfig(user, self.component_tokens[user]), indent=2))
        path.chmod(0o600)
        return path

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        with log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=_without_proxies(os.environ),
                start_new_session=not self._attached,
                preexec_fn=_die_with_parent if self._attached else None,
            )

    def _wait_healthy(
        self,
        name: str,
        url: str,
        opener: urllib.request.OpenerDirector,
        headers: Mapping[str, str],
    ) -> None:
        """Poll ``url`` until it answers 200, failing fast if a process dies meanwhile."""
        deadline = time.monotonic() + self._ready_timeout
        request = urllib.request.Request(url, headers=dict(headers))
        last = "no answer yet"
        while True:
            for proc_name, proc in (("etcd", self._etcd), ("kube-apiserver", self._apiserver)):
                if proc is not None and proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{proc_name} exited with {proc.returncode} during startup;"
                        " its log ends with:\n" + _tail(self.workdir / f"{proc_name}.log")
                    )
            try:
                with opener.open(request, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}: {err.read()[:300].decode(errors='replace')}"
            except (OSError, ssl.SSLError) as err:
                last = repr(err)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} not ready after {self._ready_timeout:.0f} s (last: {last});"
                    " its log ends with:\n" + _tail(self.workdir / f"{name}.log")
                )
            time.sleep(0.05)  # poll interval, not a wait for a condition

    def _write_kubeconfig(self) -> None:
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(json.dumps(self._kubeconfig(ADMIN_USER, self.token), indent=2))
        self.kubeconfig.chmod(0o600)

    def _kubeconfig(self, user: str, token: str) -> dict[str, object]:
        # JSON is valid YAML, and keeps this module free of a YAML dependency.
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "jwtkeymap-test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(
                            self.ca_file.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "jwtkeymap-test",
                    "context": {
                        "cluster": "jwtkeymap-test",
                        "user": user,
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "jwtkeymap-test",
        }

    def stop(self) -> None:
        """Stop both processes (apiserver first) and delete every file the control plane wrote."""
        _stop_process(self._apiserver)
        _stop_process(self._etcd)
        self._apiserver = self._etcd = None
        if self.workdir != Path() and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        """Whether both processes are alive."""
        return all(p is not None and p.poll() is None for p in (self._etcd, self._apiserver))

    @property
    def pids(self) -> dict[str, int]:
        """Process ids, for the detached ``up``/``down`` mode."""
        return {
            name: proc.pid
            for name, proc in (("etcd", self._etcd), ("kube-apiserver", self._apiserver))
            if proc is not None
        }

    # -- clients

    def client_env(self) -> dict[str, str]:
        """Environment for kubectl/helm: this cluster only, and all their caches in the workdir."""
        env = _without_proxies(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            KUBECACHEDIR=str(self.workdir / "kube-cache"),
            HELM_CACHE_HOME=str(self.workdir / "helm" / "cache"),
            HELM_CONFIG_HOME=str(self.workdir / "helm" / "config"),
            HELM_DATA_HOME=str(self.workdir / "helm" / "data"),
        )
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane; stdout/stderr are captured as text."""
        return self._run(self.binaries.kubectl, args, input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this control plane with its home directories in the workdir."""
        return self._run(self.binaries.helm, args, input, check, timeout)

    async def akubectl(
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Like :meth:`kubectl`, without blocking the event loop (webhook and operator tests)."""
        proc = await asyncio.create_subprocess_exec(
            str(self.binaries.kubectl),
            *args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.client_env(),
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(input.encode() if input is not None else None), timeout
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        done = subprocess.CompletedProcess(
            [str(self.binaries.kubectl), *args], proc.returncode, out.decode(), err.decode()
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, done.args, done.stdout, done.stderr
            )
        return done

    def _run(
        self, binary: Path, args: Sequence[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(binary), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.client_env(),
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, proc.stdout, proc.stderr
            )
        return proc


# --- manual use: `harness.py up|down` ------------------------------------------------------


def _pid_runs(pid: int, binary: str) -> bool:
    # Guard against a recycled pid: only signal a process that runs the binary we started.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return cmdline == binary


def up(state_dir: Path) -> int:
    """Start a detached control plane whose state lives in ``state_dir``."""
    if (state_dir / "state.json").exists():
        print(f"already up (state in {state_dir}); run `down` first", file=sys.stderr)
        return 1
    plane = ControlPlane(workdir=state_dir, attached=False)
    plane.start()
    # Keep the state out of git without touching the repository's .gitignore.
    (state_dir / ".gitignore").write_text("*\n")
    state = {
        "pids": plane.pids,
        "binaries": {
            "etcd": str(plane.binaries.etcd),
            "kube-apiserver": str(plane.binaries.kube_apiserver),
        },
        "server": plane.server,
        "kubeconfig": str(plane.kubeconfig),
    }
    (state_dir / "state.json").write_text(json.dumps(state, indent=2))
    print(
        f"control plane {plane.binaries.k8s_version} ready at {plane.server}"
        f" in {plane.startup_seconds:.1f} s"
    )
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def stop_recorded(state: Mapping[str, Any], order: Sequence[str]) -> None:
    """SIGTERM (then SIGKILL after 10 s) each process an ``up`` recorded, in ``order``.

    ``state`` has ``pids`` and ``binaries`` by name; a pid that no longer runs its binary
    (exited, or recycled) is left alone.
    """
    for name in order:
        pid = state.get("pids", {}).get(name)
        if pid is None or not _pid_runs(pid, state["binaries"][name]):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid_runs(pid, state["binaries"][name]) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if _pid_runs(pid, state["binaries"][name]):
            os.kill(pid, signal.SIGKILL)


def command_line(
    description: str,
    argv: Sequence[str] | None,
    commands: Mapping[str, Callable[[Path], int]],
    state_dir: Path,
    errors: tuple[type[Exception], ...],
) -> int:
    """``up`` / ``down`` for manual use: run the command on the state directory."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("command", choices=sorted(commands))
    parser.add_argument(
        "--dir", type=Path, default=state_dir, help="state directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        return commands[args.command](args.dir)
    except errors as err:
        print(err, file=sys.stderr)
        return 1


def down(state_dir: Path) -> int:
    """Stop the control plane started by :func:`up` and delete its state."""
    state_file = state_dir / "state.json"
    if not state_file.exists():
        print(f"not up (no {state_file})", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)
        return 0
    state = json.loads(state_file.read_text())
    stop_recorded(state, ("kube-apiserver", "etcd"))
    shutil.rmtree(state_dir, ignore_errors=True)
    print("control plane stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``up`` or ``down``."""
    return command_line(
        __doc__.splitlines()[0], argv, {"up": up, "down": down}, STATE_DIR,
        (BinariesMissing, ControlPlaneError),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
