#!/usr/bin/env bash
# Install the system packages the tests and the demo use, only those missing.
# Debian/Ubuntu: PostgreSQL, Redis, PgBouncer, nginx, etcd and wrk from the distribution, and what
# hack/node/images.sh builds container images with (podman, runc, debootstrap, gcc, libc6-dev).
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v npm >/dev/null 2>&1 || need+=(npm)
# hack/node/images.sh: container images built without a registry.
command -v podman >/dev/null 2>&1 || need+=(podman)
# The OCI runtime of podman's builds and of the real node's containerd: Debian's runc. (Asked
# for by name: podman may bring crun instead, which refuses hybrid cgroups v1 + v2 hosts.)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || need+=(runc)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
ls /usr/lib/*/libc.a >/dev/null 2>&1 || need+=(libc6-dev)

if [ ${#need[@]} -eq 0 ]; then
  echo "deps: system packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "deps: need root (or sudo) to install: ${need[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian's postinst scripts try to start services; nothing here wants them running.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "deps: done"
