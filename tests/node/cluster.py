"""A real single-node Kubernetes cluster on this machine, for the tests and for manual use.

The way Kubernetes' own ``hack/local-up-cluster.sh`` runs one: every component is a host process
(etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, containerd
with Debian's runc), pods get their network from the CNI reference plugins (bridge, host-local,
portmap; containerd adds loopback), and CoreDNS runs as a pod behind the ``kube-dns`` Service. No
image is pulled: the images come as archives from ``hack/node/images.sh`` and are imported into
containerd's store at start.

Addresses come from RFC 2544's benchmarking range, nothing of ours lives in 10/8, 172.16/12 or
192.168/16: pods 198.18.0.0/16 on the bridge ``jwtkm0`` (198.18.0.1 is the node: the gateway,
kubelet, kube-apiserver), Services 198.19.0.0/16 (``kubernetes`` 198.19.0.1, ``kube-dns``
198.19.0.10). Everything the cluster writes lives in its workdir; :meth:`NodeCluster.stop`
removes the pods, then the processes, mounts, network namespaces, iptables rules, the bridge and
the cgroups, and restores the kernel settings it changed. Needs root; one cluster per machine.

    python tests/node/cluster.py up      # prints `export KUBECONFIG=...`
    python tests/node/cluster.py down
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controlplane"))

from harness import (
    INSTALL_SCRIPT,
    REPO_ROOT,
    SERVICE_CIDR,
    ControlPlane,
    ControlPlaneError,
    _die_with_parent,
    _stop_process,
    _tail,
    _without_proxies,
    command_line,
    find_binaries,
    poll,
    stop_recorded,
)

from jwtkeymap.demo.ports import free_port

IMAGES_SCRIPT = REPO_ROOT / "hack" / "node" / "images.sh"
STATE_DIR = REPO_ROOT / ".cluster"
WORKDIR_PREFIX = "jwtkeymap-node-"
LOCK_FILE = Path("/run/jwtkeymap-node.lock")
LOCK_WAIT_SECONDS = float(os.environ.get("JWTKEYMAP_NODE_LOCK_WAIT", "1800"))

NODE_NAME = "jwtkeymap-node"
NODE_IP = "198.18.0.1"
POD_CIDR = "198.18.0.0/16"
BRIDGE = "jwtkm0"
CLUSTER_DNS = "198.19.0.10"
CLUSTER_DOMAIN = "cluster.local"
CGROUP_ROOT = "jwtkeymap-node"
CNI_BIN_DIR = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI

# Places outside the workdir that containerd, the CNI library and the kubelet write to whatever
# they are configured with; stop() empties the ones that did not exist before start().
HOST_DIRS = (
    Path("/run/containerd/s"),  # shim sockets
    Path("/run/containerd/fifo"),  # task I/O
    Path("/run/containerd/runc/k8s.io"),  # the sandboxes' runc state
    Path("/run/containerd/runc"),
    Path("/run/containerd"),
    Path("/var/lib/cni/results"),  # libcni's result cache
    Path("/var/lib/cni"),
    Path("/var/lib/kubelet/device-plugins"),  # the kubelet's device-plugin socket
    Path("/var/lib/kubelet"),
)

# Kernel settings the kubelet and kube-proxy (or this harness) change; restored on stop.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


class NodeError(RuntimeError):
    """A node component did not start, or the machine cannot run one."""


@dataclasses.dataclass(frozen=True)
class NodeBinaries:
    """The node's programs, as ``hack/envtest/install.sh --node`` reports them."""

    kubelet: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kube_proxy: Path
    containerd: Path
    containerd_shim: Path
    ctr: Path
    coredns_version: str


@dataclasses.dataclass(frozen=True)
class Image:
    """An image archive and the reference it carries."""

    archive: Path
    ref: str


@dataclasses.dataclass(frozen=True)
class Images:
    """The images ``hack/node/images.sh`` built: pause, CoreDNS, jwtkeymap, the Python base."""

    pause: Image
    coredns: Image
    jwtkeymap: Image
    base: Image

    def all(self) -> list[Image]:
        """The images pods run, pause first (the base only builds the others)."""
        return [self.pause, self.coredns, self.jwtkeymap]


def _script_env(script: Path, *args: str) -> dict[str, str]:
    proc = subprocess.run(
        [str(script), *args], capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise NodeError(f"{script.name} {' '.join(args)}: {proc.stderr.strip()}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def find_node_binaries() -> NodeBinaries:
    """Where the node's binaries are (never builds: run ``make cluster-up`` or ``make tools``)."""
    found = _script_env(INSTALL_SCRIPT, "--node", "--check", "--print-env")
    return NodeBinaries(
        kubelet=Path(found["JWTKEYMAP_KUBELET"]),
        kube_controller_manager=Path(found["JWTKEYMAP_KUBE_CONTROLLER_MANAGER"]),
        kube_scheduler=Path(found["JWTKEYMAP_KUBE_SCHEDULER"]),
        kube_proxy=Path(found["JWTKEYMAP_KUBE_PROXY"]),
        containerd=Path(found["JWTKEYMAP_CONTAINERD"]),
        containerd_shim=Path(found["JWTKEYMAP_CONTAINERD_SHIM_RUNC_V2"]),
        ctr=Path(found["JWTKEYMAP_CTR"]),
        coredns_version=found["JWTKEYMAP_COREDNS_VERSION"],
    )


def find_images() -> Images:
    """The image archives (never builds: run ``make images``)."""
    found = _script_env(IMAGES_SCRIPT, "--check")

    def image(key: str) -> Image:
        return Image(Path(found[f"JWTKEYMAP_IMAGE_{key}"]), found[f"JWTKEYMAP_IMAGE_{key}_REF"])

    return Images(
        pause=image("PAUSE"), coredns=image("COREDNS"), jwtkeymap=image("JWTKEYMAP"),
        base=image("BASE"),
    )  # fmt: skip


def _run(*argv: str | Path, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def _cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup v1 hierarchies (cpu, memory, …) and the unified one if any."""
    roots = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mountpoint, fstype, *_ = line.split()
        if fstype in {"cgroup", "cgroup2"}:
            roots.append(Path(mountpoint))
    return roots


def _rmdir_tree(path: Path) -> None:
    # cgroups are removed leaf first, with rmdir (their files cannot be unlinked).
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir():
            _rmdir_tree(child)
    with contextlib.suppress(OSError):
        path.rmdir()


class NodeCluster:
    """A control plane (:class:`harness.ControlPlane` in node mode) plus a node on this machine.

    After :meth:`start`: ``plane`` (kubectl, helm, kubeconfig), ``workdir``, ``timings``
    (seconds per phase) and ``startup_seconds``.
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        attached: bool = True,
        binaries: NodeBinaries | None = None,
        images: Images | None = None,
    ) -> None:
        self.node = binaries or find_node_binaries()
        self.images = images or find_images()
        self._requested_workdir = workdir
        self._attached = attached
        self.workdir = Path()
        self.plane: ControlPlane | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._sysctls: dict[str, str] = {}
        self._lock: int | None = None
        self.timings: dict[str, float] = {}
        self.startup_seconds = 0.0
        self.containerd_socket = Path()

    # -- lifecycle

    def __enter__(self) -> NodeCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component and return once the node is Ready and DNS answers."""
        if os.geteuid() != 0:
            raise NodeError("a node needs root (kubelet, containerd, network namespaces)")
        self._take_lock()
        started = time.monotonic()
        if self._requested_workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        else:
            self.workdir = self._requested_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state.json").write_text(json.dumps({"workdir": str(self.workdir)}))
        try:
            self._phase("network", self._network_up)
            self._phase("control plane", self._control_plane_up)
            self._phase("containerd", self._containerd_up)
            self._phase("images", self._import_images)
            self._phase("kubelet", self._node_up)
            self._phase("dns", self._dns_up)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _phase(self, name: str, step: object) -> None:
        began = time.monotonic()
        assert callable(step)
        step()
        self.timings[name] = time.monotonic() - began

    def _take_lock(self) -> None:
        # One node per machine (the bridge, the addresses and kube-proxy's chains are the
        # machine's): a second run waits for the first, then fails if it is still there.
        fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise NodeError(
                        f"another node cluster has run on this machine for over"
                        f" {LOCK_WAIT_SECONDS} s ({LOCK_FILE} is locked)"
                    ) from None
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd
        # A detached cluster (`make cluster-up`) holds no lock once `up` has returned; its bridge
        # (or one left by a killed run) tells.
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            os.close(fd)
            self._lock = None
            raise NodeError(
                f"the bridge {BRIDGE} exists: a node cluster is up on this machine, or a killed"
                " run left one behind; `make cluster-down` stops and removes it"
            )

    # -- network

    def _network_up(self) -> None:
        for key in SYSCTLS:
            path = Path("/proc/sys") / key
            if path.exists():
                self._sysctls[key] = path.read_text().strip()
        (self.workdir / "sysctls.json").write_text(json.dumps(self._sysctls))
        created = [str(d) for d in HOST_DIRS if not d.exists()]
        (self.workdir / "host-dirs.json").write_text(json.dumps(created))
        # Pods reach Service addresses through the node (DNAT, then routed back to the bridge).
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")
        # The bridge exists before the apiserver so the node address can be bound from the start;
        # the CNI bridge plugin adopts it.
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{NODE_IP}/16", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # A Service address kube-proxy has not (or no longer) translated must stay on this
        # machine, not leave by the default route (the host's egress answered it once).
        # Through the bridge, a translated one still reaches its pod.
        _run("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE)
        cni = self.workdir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "jwtkeymap",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # nothing leaves this machine
                    "hairpinMode": True,  # a pod reaching itself through its Service
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(cni / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (cni / "net.d" / "10-jwtkeymap.conflist").write_text(json.dumps(conflist, indent=2))

    # -- control plane

    def _control_plane_up(self) -> None:
        self.plane = ControlPlane(
            find_binaries(),
            workdir=self.workdir / "controlplane",
            attached=self._attached,
            address=NODE_IP,
            node_name=NODE_NAME,
        )
        self.plane.start()

    # -- containerd

    def _containerd_up(self) -> None:
        base = self.workdir / "containerd"
        self.containerd_socket = base / "containerd.sock"
        cri = "plugins.'io.containerd.cri.v1"
        config = textwrap.dedent(
            f"""\
            version = 3
            root = "{base / "root"}"
            state = "{base / "state"}"
            [grpc]
              address = "{self.containerd_socket}"
            [ttrpc]
              address = "{self.containerd_socket}.ttrpc"
            [plugins.'io.containerd.internal.v1.opt']
              path = "{base / "opt"}"
            [plugins.'io.containerd.nri.v1.nri']
              disable = true
            [{cri}.images']
              snapshotter = "overlayfs"
            [{cri}.images'.pinned_images]
              sandbox = "{self.images.pause.ref}"
            [{cri}.runtime']
              # This machine's root lacks CAP_SYS_RESOURCE: no process may lower its OOM score
              # below containerd's own (runc fails with "failed to update
              # /proc/self/oom_score_adj: Permission denied" for the sandbox's -998).
              restrict_oom_score_adj = true
              netns_mounts_under_state_dir = true
            [{cri}.runtime'.containerd]
              default_runtime_name = "runc"
            [{cri}.runtime'.containerd.runtimes.runc]
              runtime_type = "io.containerd.runc.v2"
            [{cri}.runtime'.containerd.runtimes.runc.options]
              BinaryName = "{RUNC}"
              Root = "{base / "runc"}"
              SystemdCgroup = false
            [{cri}.runtime'.cni]
              bin_dirs = ["{CNI_BIN_DIR}"]
              conf_dir = "{self.workdir / "cni" / "net.d"}"
            """
        )
        base.mkdir(parents=True, exist_ok=True)
        (base / "config.toml").write_text(config)
        # containerd finds its shim on PATH.
        env = {"PATH": f"{self.node.containerd_shim.parent}:{os.environ.get('PATH', '')}"}
        self._spawn("containerd", [self.node.containerd, "--config", base / "config.toml"], env=env)
        self._wait(self._containerd_answers, timeout=30, message="containerd to answer")

    def _containerd_answers(self) -> bool:
        # `ctr version` prints the client's version even when the server does not answer.
        try:
            self._ctr("version", timeout=5)
        except NodeError:
            return False
        return True

    def _ctr(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return _run(
            self.node.ctr, "--address", self.containerd_socket, "--namespace", K8S_NAMESPACE,
            *args, check=check, timeout=timeout,
        )  # fmt: skip

    def _import_images(self) -> None:
        for image in self.images.all():
            # Unpacked into the overlayfs snapshotter the CRI uses.
            self._ctr("images", "import", "--snapshotter", "overlayfs", str(image.archive),
                      timeout=300)  # fmt: skip
            # The kubelet must never try to pull these (there is no registry to pull from).
            self._ctr("images", "label", image.ref, "io.cri-containerd.pinned=pinned")

    # -- node

    def _node_up(self) -> None:
        assert self.plane is not None
        plane = self.plane
        kubelet_dir = self.workdir / "kubelet"
        kubelet_dir.mkdir(parents=True, exist_ok=True)
        self._cgroup_root_up()
        resolv = self.workdir / "resolv.conf"
        # Pods with dnsPolicy Default (CoreDNS) get this: nothing outside this machine.
        resolv.write_text("nameserver 127.0.0.1\noptions ndots:1\n")
        assert plane.tls is not None
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This host mounts cgroup v1; since 1.35 the kubelet refuses it unless told (KEP-5573).
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(plane.tls.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "failSwapOn": False,
            "serializeImagePulls": False,
            # A developer's disk may be fuller than a node's: never evict test pods for it.
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # Leave the machine's kernel settings alone (the harness restores what it changes).
            "protectKernelDefaults": False,
            "makeIPTablesUtilChains": False,
            "nodeStatusReportFrequency": "10s",
            "fileCheckFrequency": "0s",
            "syncFrequency": "10s",
            "shutdownGracePeriod": "0s",
            "oomScoreAdj": 0,  # -999 needs CAP_SYS_RESOURCE, which root lacks on these machines
            "podLogsDir": str(self.workdir / "pod-logs"),
            "registerNode": True,
        }  # fmt: skip
        (kubelet_dir / "config.json").write_text(json.dumps(config, indent=2))
        node_user = f"system:node:{NODE_NAME}"
        self._spawn(
            "kubelet",
            [
                self.node.kubelet,
                f"--config={kubelet_dir / 'config.json'}",
                f"--kubeconfig={plane.component_kubeconfig(node_user)}",
                f"--root-dir={kubelet_dir / 'root'}",
                f"--cert-dir={kubelet_dir / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-controller-manager",
            [
                self.node.kube_controller_manager,
                f"--kubeconfig={plane.component_kubeconfig('system:kube-controller-manager')}",
                f"--authentication-kubeconfig={plane.component_kubeconfig('system:kube-controller-manager')}",
                f"--authorization-kubeconfig={plane.component_kubeconfig('system:kube-controller-manager')}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={plane.workdir / 'pki' / 'service-account.key'}",
                f"--root-ca-file={plane.tls.ca_file}",
                f"--cluster-cidr={POD_CIDR}",
                "--allocate-node-cidrs=false",
                "--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                "--v=1",
            ],
        )  # fmt: skip
        scheduler_kubeconfig = plane.component_kubeconfig("system:kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                self.node.kube_scheduler,
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-proxy",
            [
                self.node.kube_proxy,
                f"--kubeconfig={plane.component_kubeconfig('system:kube-proxy')}",
                f"--hostname-override={NODE_NAME}",
                f"--cluster-cidr={POD_CIDR}",
                "--proxy-mode=iptables",
                f"--healthz-bind-address=127.0.0.1:{free_port()}",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                # Leave the machine's conntrack and localnet settings as they are.
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--iptables-localhost-nodeports=false",
                "--oom-score-adj=0",
                "--v=1",
            ],
        )
        self._wait(
            lambda: self._node_ready(),
            timeout=120,
            message=f"node {NODE_NAME} to be Ready",
        )

    def _cgroup_root_up(self) -> None:
        # The kubelet puts every pod under this cgroup in each hierarchy, so stop() finds them all.
        for hierarchy in _cgroup_hierarchies():
            root = hierarchy / CGROUP_ROOT
            root.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (root / name).exists() and not (root / name).read_text().strip():
                    (root / name).write_text((hierarchy / name).read_text())

    def _node_ready(self) -> bool:
        assert self.plane is not None
        out = self.plane.kubectl(
            "get", "node", NODE_NAME, "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        )  # fmt: skip
        return out.returncode == 0 and out.stdout.strip() == "True"

    def _wait(self, condition: object, *, timeout: float, message: str) -> None:
        assert callable(condition)

        def check() -> bool:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise NodeError(
                        f"{name} exited with {proc.returncode}; its log ends with:\n"
                        + _tail(self.workdir / f"{name}.log")
                    )
            return bool(condition())

        poll(check, timeout=timeout, message=message)

    # -- DNS

    def _dns_up(self) -> None:
        assert self.plane is not None
        manifest = (Path(__file__).parent / "coredns.yaml").read_text()
        manifest = manifest.replace("COREDNS_IMAGE", self.images.coredns.ref)
        manifest = manifest.replace("CLUSTER_DNS", CLUSTER_DNS)
        self.plane.kubectl("apply", "-f", "-", input=manifest, check=True)
        self.plane.kubectl(
            "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=120s",
            check=True, timeout=130,
        )  # fmt: skip

    # -- processes

    def _spawn(
        self, name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None
    ) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        with log:
            self._procs[name] = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**_without_proxies(os.environ), **(env or {})},
                start_new_session=not self._attached,
                preexec_fn=_die_with_parent if self._attached else None,
            )
        self._record_pids()

    def _record_pids(self) -> None:
        state = {
            "workdir": str(self.workdir),
            "pids": {name: proc.pid for name, proc in self._procs.items()},
            "binaries": {name: proc.args[0] for name, proc in self._procs.items()},  # type: ignore[index]
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))

    # -- teardown

    def stop(self) -> None:
        """Remove every pod, stop every process, and leave nothing behind on the machine."""
        if self.plane is not None and self._procs.get("kubelet") is not None:
            with contextlib.suppress(Exception):
                self._drain()
        for name in ("kube-controller-manager", "kube-scheduler", "kubelet"):
            _stop_process(self._procs.pop(name, None))
        if self.containerd_socket != Path() and "containerd" in self._procs:
            with contextlib.suppress(Exception):
                self._kill_containers()
        _stop_process(self._procs.pop("kube-proxy", None))
        _stop_process(self._procs.pop("containerd", None))
        if self.plane is not None:
            self.plane.stop()
            self.plane = None
        if self.workdir != Path():
            cleanup(self.workdir, self.node.kube_proxy, self._sysctls)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _drain(self) -> None:
        # Let the kubelet stop the pods the normal way (CNI DEL, volume unmounts) before the
        # sweep: delete the workloads, then wait until no pod is left.
        assert self.plane is not None
        for kind in ("deployments,statefulsets,daemonsets,replicasets,jobs", "pods"):
            self.plane.kubectl(
                "delete", kind, "--all", "--all-namespaces", "--grace-period=1", "--wait=false",
                timeout=30,
            )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            poll(
                lambda: (
                    not self.plane.kubectl("get", "pods", "-A", "-o", "name").stdout.strip()
                    if self.plane
                    else True
                ),
                timeout=60,
                message="every pod to be gone",
            )

    def _kill_containers(self) -> None:
        for task in self._ctr("tasks", "ls", "-q", check=False, timeout=10).split():
            self._ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=10)
        for task in self._ctr("tasks", "ls", "-q", check=False, timeout=10).split():
            self._ctr("tasks", "delete", "-f", task, check=False, timeout=10)
        for container in self._ctr("containers", "ls", "-q", check=False, timeout=10).split():
            self._ctr("containers", "rm", container, check=False, timeout=10)


def cleanup(workdir: Path, kube_proxy: Path | None, sysctls: dict[str, str]) -> None:
    """Remove what a node left on the machine, whether it stopped cleanly or not."""
    # Shims outlive containerd by design; a shim of ours names our containerd's socket.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"containerd-shim" in cmdline[0] and str(workdir).encode() in b" ".join(cmdline):
                os.kill(int(proc.name), signal.SIGKILL)
    if kube_proxy is not None:
        # kube-proxy removes its own chains (KUBE-*) in every mode it knows.
        _run(kube_proxy, "--cleanup", check=False, timeout=60)
    for tool in ("iptables", "ip6tables"):
        _sweep_chains(tool)
    # Mounts under the workdir (overlay snapshots, volumes, network namespaces), deepest first.
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(workdir) + "/")
    ]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "delete", BRIDGE, check=False)
    for hierarchy in _cgroup_hierarchies():
        _rmdir_tree(hierarchy / CGROUP_ROOT)
    created = workdir / "host-dirs.json"
    for directory in map(Path, json.loads(created.read_text()) if created.exists() else []):
        # Only what the cluster made: sockets and cache files of its containers, then the folder.
        for leftover in directory.glob("*"):
            if leftover.is_socket() or (
                leftover.is_file() and leftover.name.startswith("jwtkeymap-")
            ):
                leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            directory.rmdir()
    saved = workdir / "sysctls.json"
    if not sysctls and saved.exists():
        sysctls = json.loads(saved.read_text())
    for key, value in sysctls.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value)
    shutil.rmtree(workdir, ignore_errors=True)


def _sweep_chains(tool: str, prefixes: tuple[str, ...] = ("KUBE-", "CNI-")) -> None:
    """Delete the chains the kubelet, kube-proxy and the CNI plugins made, and the jumps to them."""
    if shutil.which(tool) is None:
        return
    for table in ("filter", "nat", "mangle"):
        dump = _run(f"{tool}-save", "-t", table, check=False)
        ours = [line[1:].split()[0] for line in dump.splitlines() if line.startswith(":")]
        ours = [chain for chain in ours if chain.startswith(prefixes)]
        if not ours:
            continue
        for line in dump.splitlines():
            parts = shlex.split(line)
            if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in ours:
                _run(tool, "-t", table, "-D", *parts[1:], check=False)
        for chain in ours:
            _run(tool, "-t", table, "-F", chain, check=False)
        for chain in ours:
            _run(tool, "-t", table, "-X", chain, check=False)


# --- manual use: `cluster.py up|down` ------------------------------------------------------


def up(state_dir: Path) -> int:
    """Start a detached cluster whose state lives in ``state_dir``."""
    if (state_dir / "state.json").exists():
        print(f"already up (state in {state_dir}); run `make cluster-down` first", file=sys.stderr)
        return 1
    cluster = NodeCluster(workdir=state_dir, attached=False)
    cluster.start()
    (state_dir / ".gitignore").write_text("*\n")
    cluster._record_pids()
    state = json.loads((state_dir / "state.json").read_text())
    assert cluster.plane is not None
    state["pids"].update(cluster.plane.pids)
    state["binaries"].update(
        {"etcd": str(cluster.plane.binaries.etcd),
         "kube-apiserver": str(cluster.plane.binaries.kube_apiserver)}
    )  # fmt: skip
    state["kube_proxy"] = str(cluster.node.kube_proxy)
    (state_dir / "state.json").write_text(json.dumps(state, indent=2))
    # The lock stays with the detached processes' owner: `down` checks the state file instead.
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in cluster.timings.items())
    print(f"node {NODE_NAME} Ready in {cluster.startup_seconds:.1f} s ({phases})")
    print(f"export KUBECONFIG={cluster.plane.kubeconfig}")
    return 0


def down(state_dir: Path) -> int:
    """Stop the cluster started by :func:`up` and remove everything it left."""
    state_file = state_dir / "state.json"
    if not state_file.exists():
        # Nothing started by `up`; sweep what a killed test run may have left, unless a run
        # is alive (it holds the lock for as long as its cluster runs).
        fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            print(f"a test run's cluster is running ({LOCK_FILE} is held): left alone")
            return 1
        left = [p for p in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*") if p.is_dir()]
        for workdir in left:
            cleanup(workdir, None, {})
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            cleanup(state_dir, None, {})
            left.append(state_dir)
        os.close(fd)
        print("swept what a killed run left" if left else f"not up (no {state_file})")
        return 0
    state = json.loads(state_file.read_text())
    stop_recorded(state, ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
                          "containerd", "kube-apiserver", "etcd"])  # fmt: skip
    kube_proxy = state.get("kube_proxy")
    cleanup(state_dir, Path(kube_proxy) if kube_proxy else None, {})
    print("cluster stopped; nothing left behind")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``up`` or ``down``."""
    return command_line(
        __doc__.splitlines()[0], argv, {"up": up, "down": down}, STATE_DIR,
        (NodeError, ControlPlaneError),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
