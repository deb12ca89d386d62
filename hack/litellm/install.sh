#!/usr/bin/env bash
# Provide a real LiteLLM proxy for the tests: a virtualenv with the pinned
# litellm[proxy] and prisma (requirements.txt), the Prisma engine stand-in's npm
# packages (engine/package.json), and LiteLLM's Prisma client generated against them.
#
# Usage: hack/litellm/install.sh [--check] [--print-env]
#   (default)     build what is missing (progress on stderr), then print KEY=value lines
#   --check       build nothing; exit 3 when the install is missing or out of date
#   --print-env   the default output, stated explicitly
#
# Everything goes to ${XDG_CACHE_HOME:-$HOME/.cache}/jwtkeymap/litellm/<digest>/ (override
# with JWTKEYMAP_LITELLM_DIR), where <digest> covers both pin files, so a changed pin
# builds a fresh install beside the old one. Needs network only to PyPI and npm; about
# a minute cold on 2 cores, well under a second once cached.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

check_only=0
for arg in "$@"; do
  case $arg in
    --check) check_only=1 ;;
    --print-env) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[litellm] $*" >&2; }
# Importing litellm fetches a model cost map from the internet unless told to use its own
# copy: every step here (and every process the tests start) stays on this machine.
export LITELLM_LOCAL_MODEL_COST_MAP=True

digest=$(cat "$HERE/requirements.txt" "$HERE/engine/package.json" | sha256sum | cut -c1-12)
DIR=${JWTKEYMAP_LITELLM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jwtkeymap/litellm/$digest}
STAMP=$DIR/.complete

print_env() {
  echo "JWTKEYMAP_LITELLM_DIR=$DIR"
  echo "JWTKEYMAP_LITELLM_PYTHON=$DIR/venv/bin/python"
  echo "JWTKEYMAP_LITELLM_BIN=$DIR/venv/bin/litellm"
  echo "JWTKEYMAP_ENGINE_MODULES=$DIR/engine/node_modules"
  echo "JWTKEYMAP_ENGINE_BINARY=$HERE/engine/query-engine"
  echo "JWTKEYMAP_SCHEMA_ENGINE_BINARY=$HERE/engine/schema-engine"
  echo "JWTKEYMAP_ENGINE_SCRIPT=$HERE/engine/server.mjs"
  echo "PRISMA_HOME_DIR=$DIR/prisma-home"
}

if [[ -f $STAMP ]]; then
  print_env
  exit 0
fi
if (( check_only )); then
  echo "install.sh: no LiteLLM install at $DIR; run hack/litellm/install.sh (or make litellm)" >&2
  exit 3
fi

command -v node >/dev/null && command -v npm >/dev/null || {
  echo "install.sh: node and npm are needed (make deps installs them)" >&2
  exit 2
}
mkdir -p "$DIR"
if [[ ! -x $DIR/venv/bin/python ]]; then
  log "virtualenv"
  "${PYTHON:-python3}" -m venv "$DIR/venv"
fi
log "pip install -r requirements.txt (litellm[proxy], prisma)"
"$DIR/venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"

log "npm install of the engine stand-in's packages"
mkdir -p "$DIR/engine"
cp "$HERE/engine/package.json" "$DIR/engine/package.json"
(cd "$DIR/engine" && npm install --no-audit --no-fund --no-package-lock --loglevel=error >&2)

log "prisma generate (LiteLLM's schema; engines are the stand-ins)"
proxy_dir=$("$DIR/venv/bin/python" -c 'import litellm.proxy, os; print(os.path.dirname(litellm.proxy.__file__))')
(
  cd "$proxy_dir"
  export PRISMA_HOME_DIR=$DIR/prisma-home
  export PRISMA_QUERY_ENGINE_BINARY=$HERE/engine/query-engine
  export PRISMA_SCHEMA_ENGINE_BINARY=$HERE/engine/schema-engine
  export PRISMA_ENGINES_CHECKSUM_IGNORE_MISSING=1
  export PRISMA_HIDE_UPDATE_MESSAGE=1
  export DATABASE_URL=${DATABASE_URL:-postgresql://unused@127.0.0.1:1/unused}
  PATH=$DIR/venv/bin:$PATH prisma generate >&2
)
touch "$STAMP"
log "ready in $DIR"
print_env
