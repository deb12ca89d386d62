#!/usr/bin/env bash
# Build the container images of the single-node test cluster without any registry, and write
# each one as a docker-archive tarball that `ctr -n k8s.io images import` (or `podman load`)
# takes as is.
#
# Usage: hack/node/images.sh [--check] [--print-env]
#   (default)     build what is missing (progress on stderr), then print KEY=value lines
#                 (sourceable) on stdout: JWTKEYMAP_IMAGE_<NAME>=<tarball> and
#                 JWTKEYMAP_IMAGE_<NAME>_REF=<image reference> for BASE, JWTKEYMAP, PAUSE, COREDNS.
#   --check       build nothing; exit 3 and name the images whose tarball is missing.
#   --print-env   the default output, stated explicitly.
#
# The images (all localhost/jwtkeymap/…, so nothing ever tries a registry):
#   debian-python:bookworm  `debootstrap --variant=minbase bookworm` from the Debian mirror apt
#                           uses on this machine, with python3, python3-venv, python-is-python3 and
#                           ca-certificates, upgraded from bookworm-updates/-security, then cleaned
#                           and `podman import`ed. The project Dockerfile's PYTHON_IMAGE here.
#   jwtkeymap:<ver>-<hash>  the repository's Dockerfile, built on the base above; <hash> covers the
#                           build context (Dockerfile, .dockerignore, pyproject.toml, README.md,
#                           operator/: the working-tree content of files git tracks or does not
#                           ignore) and the base's recipe, so a cached tarball is reused only when
#                           none of them changed. The Dockerfile's RUN steps reach PyPI and Debian
#                           through the host network (`--network host`).
#   pause:<tag>             Kubernetes' pause.c from the k8s.io/kubernetes Go module pinned in
#                           hack/envtest/go.mod (<tag> is TAG in its build/pause/Makefile),
#                           `gcc -Os -static`, on scratch, entrypoint /pause, user 65535.
#   coredns:<version>       a static coredns binary on scratch, entrypoint /coredns: the one
#                           $JWTKEYMAP_COREDNS names, else the one `make tools` built
#                           (hack/envtest/install.sh --node); <version> is the pin of
#                           hack/node/coredns/go.mod, and the binary must report it.
#
# Everything goes under ${XDG_CACHE_HOME:-$HOME/.cache}/jwtkeymap/images/ (override the whole
# path with JWTKEYMAP_IMAGES_DIR): the tarballs (<name>_<tag>.tar, written to a temporary name
# and renamed once verified), the debootstrap rootfs tarball (rootfs/), and podman's own
# storage, state and configuration (podman/). Podman runs with CONTAINERS_CONF and
# CONTAINERS_STORAGE_CONF pointing at files written there, so no image or layer lands in
# /var/lib/containers and /etc/containers is not touched (podman 4.3 still keeps its small
# blob-info cache, digests only, in /var/lib/containers/cache/). No container ever joins
# podman's bridge network (10.88.0.0/16): builds use the host network, checks use none.
# Podman's storage keeps the layers the current images stand on (the Dockerfile's build stage,
# tagged localhost/jwtkeymap/jwtkeymap-build:cache, among them) as build cache. Project
# tarballs (and images) of the 4 most recently built or used tags are kept, so work trees
# sharing this cache do not drop each other's; older ones go, layers included.
#
# Each archive is verified before it is kept: loaded into a throwaway storage and run there
# (the project image prints its version as uid 10001 on a read-only root, pause starts and
# stops on SIGTERM, coredns prints its version and has the kubernetes plugin).
#
# Needs root (debootstrap, chroot, rootful podman) and podman, debootstrap, gcc with
# libc6-dev, go and git (`make deps` installs the Debian ones), and for CoreDNS the binary
# `make tools` builds. Cold, about 4 minutes on 2 cores (debootstrap and its upgrade 2 to 3.5
# minutes of it); warm, well under a second. hack/node/README.md has the details.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

check_only=0
for arg in "$@"; do
  case $arg in
    --check) check_only=1 ;;
    --print-env) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "images.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[images] $*" >&2; }
die() { echo "images.sh: $*" >&2; exit 1; }

CACHE_DIR=${JWTKEYMAP_IMAGES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jwtkeymap/images}
PODMAN_DIR=$CACHE_DIR/podman
# Podman refuses a runroot longer than 50 characters ("the specified runroot is longer than 50
# characters"), which a cache under a long home folder exceeds; its state is transient, so it
# lives in /run under a short name that stays the same for this cache (podman's database
# remembers it).
RUNROOT=/run/jwtkeymap-podman-$(printf %s "$PODMAN_DIR" | sha256sum | cut -c1-8)

SUITE=bookworm
BASE_PACKAGES=(python3 python3-venv python-is-python3 ca-certificates)
BASE_REF=localhost/jwtkeymap/debian-python:$SUITE
# The CoreDNS pin lives in the module that builds it (hack/envtest/install.sh --node).
COREDNS_VERSION=$(awk '($1 == "require" && $2 == "github.com/coredns/coredns") { print $3; exit }
  $1 == "github.com/coredns/coredns" { print $2; exit }' "$ROOT/hack/node/coredns/go.mod")
[[ $COREDNS_VERSION == v* ]] || die "cannot read the CoreDNS version from $ROOT/hack/node/coredns/go.mod"
COREDNS_REF=localhost/jwtkeymap/coredns:$COREDNS_VERSION

WORK_DIRS=()
cleanup() {
  local dir
  for dir in "${WORK_DIRS[@]}"; do
    # An interrupted debootstrap may leave proc/sys mounted in its target.
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l || true
    rm -rf --one-file-system "$dir"
  done
}
trap cleanup EXIT
# A fresh directory in $WORK, removed on exit (not called in $(…): the list must outlive it).
WORK=""
workdir() {
  WORK=$(mktemp -d "$CACHE_DIR/.work.XXXXXX")
  WORK_DIRS+=("$WORK")
}

# --- names and tags: all computed without building anything (--check needs them) -----------

# The first URI of an enabled `deb` source serving suite $1, from apt's own configuration.
apt_uri() {
  local suite=$1 f
  {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -f $f ]] || continue
      awk -v s="$suite" '$1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == s) print $i
      }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
      [[ -f $f ]] || continue
      awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (j = 1; j <= NF; j++) {
          if ($j ~ /^#/ || $j !~ /:/) continue
          key = tolower(substr($j, 1, index($j, ":") - 1))
          val = substr($j, index($j, ":") + 1)
          if (key == "types") types = " " val " "
          else if (key == "uris") uris = val
          else if (key == "suites") suites = " " val " "
          else if (key == "enabled") enabled = val
        }
        gsub(/[ \t]+/, " ", types); gsub(/[ \t]+/, " ", suites); gsub(/^[ \t]+/, "", enabled)
        if (enabled != "no" && types ~ / deb / && suites ~ (" " s " ")) { split(uris, u, " "); print u[1] }
      }' "$f"
    done
  } | head -1
}

# The recipe of the base image: this script's rootfs and base-image functions and the package
# list. A changed recipe names a new rootfs tarball, a new base tarball and a new project tag.
base_digest() {
  { declare -f build_rootfs build_base; declare -p BASE_PACKAGES SUITE; } | sha256sum | cut -c1-12
}

# Files of the project image's build context: tracked or not ignored, present in the work tree.
context_files() {
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard -- \
    Dockerfile .dockerignore pyproject.toml README.md operator |
    sort -zu | while IFS= read -r -d '' f; do [[ -f $ROOT/$f ]] && printf '%s\0' "$f"; done
}

project_version() {
  python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$ROOT/pyproject.toml"
}

project_tag() {
  local files
  files=$(cd "$ROOT" && context_files | xargs -0 sha256sum)
  echo "$(project_version)-$(printf '%s\nbase %s\n' "$files" "$BASE_DIGEST" | sha256sum | cut -c1-12)"
}

find_go() {
  if command -v go >/dev/null; then command -v go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  return 1
}

# The k8s.io/kubernetes module source pinned by hack/envtest/go.mod (downloaded unless --check).
K8S_DIR="" K8S_VERSION=""
k8s_source() {
  local go_bin json proxy=()
  go_bin=$(find_go) || { echo "images.sh: no Go toolchain found (needed for the pause source)" >&2; return 1; }
  (( check_only )) && proxy=(GOPROXY=off)
  json=$(cd "$ROOT/hack/envtest" && env "${proxy[@]}" GOWORK=off GOFLAGS=-mod=mod \
    "$go_bin" mod download -json k8s.io/kubernetes) || return 1
  K8S_DIR=$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$json")
  K8S_VERSION=$(sed -n 's/^\t"Version": "\(.*\)",$/\1/p' <<<"$json")
  [[ -f $K8S_DIR/build/pause/linux/pause.c ]]
}

pause_tag() { awk '$1 == "TAG" && $2 == "?=" { print $3; exit }' "$K8S_DIR/build/pause/Makefile"; }

# --- building -------------------------------------------------------------------------------

write_if_changed() {
  local file=$1 content
  content=$(cat)
  if [[ ! -f $file || $(<"$file") != "$content" ]]; then
    printf '%s\n' "$content" >"$file.tmp"
    mv -f "$file.tmp" "$file"
  fi
}

# Podman's (buildah's) own temporary files go under the cache too; not exported, or the
# chroot's maintainer scripts would look for it.
podman() { TMPDIR=$PODMAN_DIR/tmp command podman "$@"; }

# A second, throwaway podman storage where each archive is loaded and run before it is kept:
# proof that the tarball alone carries the image, as it will for containerd.
VERIFY_DIR=""
vpodman() {
  podman --root "$VERIFY_DIR/storage" --runroot "$VERIFY_DIR/run" --tmpdir "$VERIFY_DIR/tmp" \
    --storage-driver overlay --storage-opt overlay.skip_mount_home=true "$@"
}

timed() {
  local what=$1 started=$SECONDS
  shift
  "$@"
  log "$what: $((SECONDS - started)) s"
}

# Save $ref as a docker-archive, verify it with $verify_fn in the throwaway storage, keep it.
save_image() {
  local ref=$1 tar=$2 verify_fn=$3 tmp
  tmp=$(dirname "$tar")/.$(basename "$tar").tmp
  rm -f "$tmp"
  podman save --quiet --format docker-archive -o "$tmp" "$ref"
  # Short, for podman's 50-character runroot limit (the cache's path may be long).
  VERIFY_DIR=$(mktemp -d /tmp/jwtkeymap-verify.XXXXXX)
  WORK_DIRS+=("$VERIFY_DIR")
  vpodman load --quiet -i "$tmp" >&2
  vpodman image exists "$ref" || die "$tmp does not load as $ref"
  "$verify_fn" "$ref"
  vpodman rmi --all --force >/dev/null
  rm -rf --one-file-system "$VERIFY_DIR"
  mv -f "$tmp" "$tar"
  log "$ref -> $tar ($(du -m "$tar" | cut -f1) MB)"
}

# --- base image -----------------------------------------------------------------------------

build_rootfs() {
  local work mirror security target
  mirror=${JWTKEYMAP_DEBIAN_MIRROR:-$(apt_uri "$SUITE")}
  mirror=${mirror:-http://deb.debian.org/debian}
  security=$(apt_uri "$SUITE-security")
  security=${security:-http://deb.debian.org/debian-security}
  workdir
  work=$WORK
  target=$work/rootfs
  log "debootstrap --variant=minbase $SUITE from $mirror (a few minutes)"
  debootstrap --variant=minbase --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
    "$SUITE" "$target" "$mirror" >&2
  # The same sources as Debian's own images: the release, its updates and security.
  rm -f "$target/etc/apt/sources.list"
  cat >"$target/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  log "apt-get upgrade from $SUITE-updates and $SUITE-security"
  chroot "$target" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -qq && apt-get -y -qq -o Dpkg::Use-Pty=0 upgrade && apt-get clean' >&2
  # What an image does not carry: package lists, caches, logs, the host's resolver and name.
  rm -rf "$target"/var/lib/apt/lists/* "$target"/var/cache/apt/* "$target"/var/cache/debconf/*-old \
    "$target"/var/lib/dpkg/*-old "$target"/var/log/* "$target"/tmp/* "$target"/var/tmp/* \
    "$target"/root/.cache
  mkdir -p "$target/var/lib/apt/lists/partial"
  : >"$target/etc/resolv.conf"
  echo localhost >"$target/etc/hostname"
  rm -f "$target/etc/machine-id"
  tar --numeric-owner --xattrs -C "$target" -cf "$ROOTFS_TAR.tmp" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' .
  mv -f "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  log "rootfs -> $ROOTFS_TAR ($(du -m "$ROOTFS_TAR" | cut -f1) MB)"
}

build_base() {
  podman import --quiet \
    --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV=LANG=C.UTF-8' \
    --change "LABEL=io.jwtkeymap.base-digest=$BASE_DIGEST" \
    --change 'CMD=["python3"]' \
    --message "debootstrap --variant=minbase $SUITE + ${BASE_PACKAGES[*]}" \
    "$ROOTFS_TAR" "$BASE_REF" >/dev/null
}

verify_base() {
  local out
  out=$(vpodman run --rm --network none "$1" \
    sh -c 'python --version && python -c "import ensurepip, ssl, venv" && command -v apt-get groupadd useradd')
  log "base: $(echo "$out" | head -1)"
}

# The project build needs the base in podman's storage, from this recipe.
ensure_base_loaded() {
  local have
  have=$(podman image inspect --format '{{index .Labels "io.jwtkeymap.base-digest"}}' "$BASE_REF" 2>/dev/null || true)
  if [[ $have != "$BASE_DIGEST" ]]; then
    podman load --quiet -i "$BASE_TAR" >&2
  fi
}

# --- project image --------------------------------------------------------------------------

build_project() {
  local ctx
  workdir
  ctx=$WORK
  (cd "$ROOT" && context_files | tar --null -T - -cf -) | tar -xf - -C "$ctx"
  # The RUN steps trust what this host trusts (a TLS-inspecting egress proxy's CA included):
  # the host's bundle is mounted over the base's for the build only, never committed. Debian's
  # pip reads that path.
  local ca=/etc/ssl/certs/ca-certificates.crt trust=()
  [[ -f $ca ]] && trust=(--volume "$ca:$ca:ro")
  local build=(podman build --network host --pull=never --layers "${trust[@]}"
    --build-arg PYTHON_IMAGE="$BASE_REF")
  log "podman build of the Dockerfile on $BASE_REF (apt-get and pip reach the network; minutes)"
  # The build stage first, tagged: it holds the layer cache (apt-get's build-essential above
  # all) that drop_old_projects keeps; the full build then takes that stage from the cache.
  "${build[@]}" --target build -t "$PROJECT_BUILD_REF" "$ctx" >&2
  "${build[@]}" -t "$PROJECT_REF" "$ctx" >&2
}

verify_project() {
  local out id version
  version=$(project_version)
  out=$(vpodman run --rm --network none --read-only "$1" --version)
  [[ $out == *"$version"* ]] || die "$1 --version printed '$out', not $version"
  # shellcheck disable=SC2016 # expanded in the container
  id=$(vpodman run --rm --network none --entrypoint sh "$1" -c 'echo "$(id -u):$(id -g)"')
  [[ $id == 10001:10001 ]] || die "$1 runs as uid:gid $id, not 10001:10001"
  vpodman run --rm --network none --read-only --entrypoint python "$1" \
    -c 'import jwtkeymap, redis, uvloop' || die "$1 lacks its package or the redis/fast extras"
  # The resolver's nginx engine: on PATH for uid 10001, with the auth_request module.
  vpodman run --rm --network none --read-only --entrypoint sh "$1" \
    -c 'nginx -V 2>&1 | grep -q -- --with-http_auth_request_module' ||
    die "$1 lacks nginx with auth_request (the resolver's nginx engine)"
  log "jwtkeymap: --version prints '$out', runs as uid:gid $id"
}

# Project tarballs are kept for the KEEP_PROJECTS most recently built or used tags (several
# work trees share this cache, each with its own tag); older ones go with their images, and of
# the layer cache only what the tagged images (the current build stage among them) stand on
# stays.
KEEP_PROJECTS=4
drop_old_projects() {
  local tar ref keep=()
  mapfile -t keep < <(find "$CACHE_DIR" -maxdepth 1 -name 'jwtkeymap_*.tar' -printf '%T@ %p\n' |
    sort -rn | head -n "$KEEP_PROJECTS" | cut -d' ' -f2-)
  for tar in "$CACHE_DIR"/jwtkeymap_*.tar; do
    if [[ -f $tar && " ${keep[*]} " != *" $tar "* ]]; then rm -f "$tar"; fi
  done
  podman images --format '{{.Repository}}:{{.Tag}}' localhost/jwtkeymap/jwtkeymap |
    while read -r ref; do
      if [[ ! -f $CACHE_DIR/jwtkeymap_${ref##*:}.tar ]]; then podman rmi "$ref" >/dev/null || true; fi
    done
  podman image prune --force >/dev/null
}

# --- pause ----------------------------------------------------------------------------------

build_pause() {
  local ctx
  workdir
  ctx=$WORK
  log "pause $PAUSE_TAG from $K8S_DIR/build/pause/linux/pause.c"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-$K8S_VERSION" \
    -o "$ctx/pause" "$K8S_DIR/build/pause/linux/pause.c"
  strip "$ctx/pause"
  # As upstream's build/pause/Dockerfile, on scratch instead of a distroless base.
  cat >"$ctx/Containerfile" <<'EOF'
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
EOF
  podman build --network none --pull=never -t "$PAUSE_REF" "$ctx" >&2
}

verify_pause() {
  local out cid state code
  out=$(vpodman run --rm --network none "$1" -v)
  [[ $out == "pause.c v$PAUSE_TAG-"* ]] || die "$1 -v printed '$out'"
  cid=$(vpodman run -d --network none "$1")
  sleep 1
  state=$(vpodman inspect --format '{{.State.Status}}' "$cid")
  vpodman stop --time 10 "$cid" >/dev/null
  code=$(vpodman inspect --format '{{.State.ExitCode}}' "$cid")
  vpodman rm "$cid" >/dev/null
  [[ $state == running && $code == 0 ]] || die "$1: state '$state', exit code '$code' after SIGTERM"
  log "pause: '$out', runs, exits 0 on SIGTERM"
}

# --- coredns --------------------------------------------------------------------------------

build_coredns() {
  local bin=${JWTKEYMAP_COREDNS:-} ctx out
  if [[ -z $bin ]]; then
    bin=$("$ROOT/hack/envtest/install.sh" --node --check --print-env 2>/dev/null |
      sed -n 's/^JWTKEYMAP_COREDNS=//p') || true
  fi
  [[ -n $bin ]] || die "no coredns binary: set JWTKEYMAP_COREDNS to a static coredns $COREDNS_VERSION binary, or build it with make tools (hack/envtest/install.sh --node)"
  [[ -f $bin && -x $bin ]] || die "JWTKEYMAP_COREDNS=$bin is not an executable file"
  out=$("$bin" -version 2>&1) || true
  out=${out%%$'\n'*}
  [[ $out == "CoreDNS-${COREDNS_VERSION#v}" ]] ||
    die "$bin -version says '$out', not CoreDNS-${COREDNS_VERSION#v} (JWTKEYMAP_COREDNS names the binary)"
  workdir
  ctx=$WORK
  cp "$bin" "$ctx/coredns"
  cat >"$ctx/Containerfile" <<'EOF'
FROM scratch
COPY coredns /coredns
EXPOSE 53 53/udp
ENTRYPOINT ["/coredns"]
EOF
  log "coredns $COREDNS_VERSION from $bin"
  podman build --network none --pull=never -t "$COREDNS_REF" "$ctx" >&2
}

verify_coredns() {
  local out
  out=$(vpodman run --rm --network none "$1" -version)
  out=${out%%$'\n'*}
  [[ $out == "CoreDNS-${COREDNS_VERSION#v}" ]] || die "$1 -version printed '$out' (a dynamic binary fails here)"
  vpodman run --rm --network none "$1" -plugins >"$VERIFY_DIR/plugins"
  grep -Eqx '[[:space:]]*(dns\.)?kubernetes' "$VERIFY_DIR/plugins" || die "$1 has no kubernetes plugin"
  log "coredns: '$out', with the kubernetes plugin"
}

# --- main ----------------------------------------------------------------------------------

BASE_DIGEST=$(base_digest)
ROOTFS_TAR=$CACHE_DIR/rootfs/debian-$SUITE-python_$BASE_DIGEST.tar
BASE_TAR=$CACHE_DIR/debian-python_${SUITE}_$BASE_DIGEST.tar
PROJECT_TAG=$(project_tag)
PROJECT_REF=localhost/jwtkeymap/jwtkeymap:$PROJECT_TAG
PROJECT_TAR=$CACHE_DIR/jwtkeymap_$PROJECT_TAG.tar
PROJECT_BUILD_REF=localhost/jwtkeymap/jwtkeymap-build:cache # the Dockerfile's build stage
PAUSE_REF="" PAUSE_TAR=""
if k8s_source; then
  PAUSE_TAG=$(pause_tag)
  [[ -n $PAUSE_TAG ]] || die "no TAG in $K8S_DIR/build/pause/Makefile"
  PAUSE_REF=localhost/jwtkeymap/pause:$PAUSE_TAG
  PAUSE_TAR=$CACHE_DIR/pause_$PAUSE_TAG.tar
fi
COREDNS_TAR=$CACHE_DIR/coredns_$COREDNS_VERSION.tar

missing() {
  local m=()
  [[ -f $BASE_TAR ]] || m+=("base ($BASE_REF)")
  [[ -f $PROJECT_TAR ]] || m+=("jwtkeymap ($PROJECT_REF)")
  [[ -n $PAUSE_TAR && -f $PAUSE_TAR ]] || m+=("pause (${PAUSE_REF:-k8s.io/kubernetes source not in the Go module cache})")
  [[ -f $COREDNS_TAR ]] || m+=("coredns ($COREDNS_REF)")
  local IFS=,
  echo "${m[*]:-}"
}

emit() {
  echo "JWTKEYMAP_IMAGE_BASE=$BASE_TAR"
  echo "JWTKEYMAP_IMAGE_BASE_REF=$BASE_REF"
  echo "JWTKEYMAP_IMAGE_JWTKEYMAP=$PROJECT_TAR"
  echo "JWTKEYMAP_IMAGE_JWTKEYMAP_REF=$PROJECT_REF"
  echo "JWTKEYMAP_IMAGE_PAUSE=$PAUSE_TAR"
  echo "JWTKEYMAP_IMAGE_PAUSE_REF=$PAUSE_REF"
  echo "JWTKEYMAP_IMAGE_COREDNS=$COREDNS_TAR"
  echo "JWTKEYMAP_IMAGE_COREDNS_REF=$COREDNS_REF"
}

todo=$(missing)
if [[ -z $todo ]]; then
  touch -c "$PROJECT_TAR" # in use: the last to be dropped (drop_old_projects)
  emit
  exit 0
fi
if (( check_only )); then
  echo "images.sh: missing: ${todo//,/, } (looked in $CACHE_DIR)" >&2
  echo "images.sh: run hack/node/images.sh (or make images) to build them (a cold build takes minutes)" >&2
  exit 3
fi

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot and rootful podman); run it with sudo"
[[ -n $PAUSE_TAR ]] || die "cannot get the k8s.io/kubernetes module source (see the go output above)"
for tool in podman debootstrap gcc; do
  command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || die "$tool is missing; make deps (hack/install-deps.sh) installs it"
done
ls /usr/lib/*/libc.a >/dev/null 2>&1 || die "libc6-dev is missing (static libc for pause); make deps installs it"

mkdir -p "$CACHE_DIR/rootfs" "$PODMAN_DIR"
# Two concurrent runs must not build into the same files.
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi

# Podman's configuration: ours only (CONTAINERS_CONF replaces every other containers.conf).
write_if_changed "$PODMAN_DIR/containers.conf" <<EOF
# Written by hack/node/images.sh; podman reads it through CONTAINERS_CONF.
[containers]
# Podman's default ulimits exceed the hard limits of some machines
# (error setting rlimit type 7: operation not permitted): inherit ours instead.
default_ulimits = []
# No container joins podman's bridge network (10.88.0.0/16) unless told otherwise.
netns = "none"

[network]
network_config_dir = "$PODMAN_DIR/networks"

[engine]
# Debian's runc, as the real node's containerd uses (crun, podman's other choice, refuses a
# host with cgroups v1 and v2 mounted side by side: "cgroups in hybrid mode not supported").
runtime = "runc"
# No systemd needed (cgroups v1 or v2, any init).
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$PODMAN_DIR/tmp"
image_copy_tmp_dir = "$PODMAN_DIR/tmp"
EOF
write_if_changed "$PODMAN_DIR/storage.conf" <<EOF
# Written by hack/node/images.sh; podman reads it through CONTAINERS_STORAGE_CONF.
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$RUNROOT"

[storage.options.overlay]
# No bind mount of the storage onto itself left behind: the cache stays removable with rm -rf.
skip_mount_home = "true"
EOF
export CONTAINERS_CONF=$PODMAN_DIR/containers.conf CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
mkdir -p "$PODMAN_DIR/tmp" "$PODMAN_DIR/networks"

started=$SECONDS
log "cache: $CACHE_DIR"
if [[ ! -f $BASE_TAR ]]; then
  [[ -f $ROOTFS_TAR ]] || timed "rootfs (debootstrap + upgrade)" build_rootfs
  timed "base image" build_base
  save_image "$BASE_REF" "$BASE_TAR" verify_base
fi
if [[ ! -f $PROJECT_TAR ]]; then
  ensure_base_loaded
  timed "jwtkeymap image" build_project
  save_image "$PROJECT_REF" "$PROJECT_TAR" verify_project
  drop_old_projects
fi
if [[ ! -f $PAUSE_TAR ]]; then
  timed "pause image" build_pause
  save_image "$PAUSE_REF" "$PAUSE_TAR" verify_pause
fi
if [[ ! -f $COREDNS_TAR ]]; then
  timed "coredns image" build_coredns
  save_image "$COREDNS_REF" "$COREDNS_TAR" verify_coredns
fi
todo=$(missing)
[[ -z $todo ]] || die "still missing after the build: ${todo//,/, }"
log "ready in $((SECONDS - started)) s"
emit
