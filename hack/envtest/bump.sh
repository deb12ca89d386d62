#!/usr/bin/env bash
# Re-pin the helper module to another Kubernetes release: hack/envtest/bump.sh v1.36.3
#
# The published k8s.io/kubernetes module requires its staging modules (k8s.io/api, k8s.io/apiserver,
# ...) at the placeholder v0.0.0, so go.mod replaces each one with its real v0.X.Y tag. The list of
# staging modules changes between releases, so it is read from that release's own go.mod, as are
# its `go` and `godebug` lines (GODEBUG defaults follow the main module). etcd is pinned to the
# server version that release itself requires, so adding it does not move the apiserver's graph.
# Then run hack/envtest/install.sh, which builds into a cache folder named after the new version.
set -euo pipefail

K8S=${1:?usage: bump.sh vX.Y.Z}
DIR=${ENVTEST_MODULE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod
command -v go >/dev/null || export PATH=/usr/local/go/bin:$PATH

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
upstream=$(cd "$scratch" && go mod download -json "k8s.io/kubernetes@$K8S" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')
staging_version=v0.${K8S#v1.}
etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' "$upstream")

cd "$DIR"
{
  echo "module jwtkeymap.local/hack/envtest"
  echo
  grep -E '^go ' "$upstream"
  echo
  grep -E '^godebug ' "$upstream" || true
} >go.mod
rm -f go.sum
sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => \./staging/.*#\1#p' "$upstream" | while read -r module; do
  go mod edit -replace="$module=$module@$staging_version"
done
go get -tool "go.etcd.io/etcd/server/v3@$etcd" \
  "k8s.io/kubernetes/cmd/kube-apiserver@$K8S" "k8s.io/kubernetes/cmd/kubelet@$K8S" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S" "k8s.io/kubernetes/cmd/kube-scheduler@$K8S" \
  "k8s.io/kubernetes/cmd/kube-proxy@$K8S"
go mod tidy
echo "pinned kubernetes $K8S (staging $staging_version) and etcd $etcd in $DIR/go.mod" >&2
