#!/usr/bin/env bash
# End-to-end run on a throwaway kind cluster (opt-in: needs Docker, kind, kubectl, helm).
#
#   e2e/run.sh              create the cluster, run every step, assert, delete the cluster
#   e2e/run.sh --dry-run    print every step and command without running anything
#   e2e/run.sh --keep       leave the cluster up afterwards (to look around)
#
# Steps: kind cluster -> build and load the image -> PostgreSQL -> migrate and create a
# virtual key -> helm install -> a JWTKeyMapping -> a labelled echo upstream (the resolver
# is injected in front of it) -> signed JWTs through the sidecar: allowed and denied.
#
# Environment: CLUSTER (jwtkeymap-e2e), IMAGE (jwtkeymap:e2e), PYTHON (.venv/bin/python),
# KIND_NODE_IMAGE (kind's default), LOCAL_PORT (18181).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${CLUSTER:-jwtkeymap-e2e}"
IMAGE="${IMAGE:-jwtkeymap:e2e}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
LOCAL_PORT="${LOCAL_PORT:-18181}"
SYSTEM_NS="jwtkeymap-system"
DB_NS="jwtkeymap-e2e-db"
APP_NS="jwtkeymap-e2e-app"
ISSUER="https://idp.e2e.jwtkeymap.test"
DRY_RUN=0
KEEP=0
FAILURES=0
WORKDIR=""
FORWARD_PID=""
SECRETS=() # values never printed: the database password, the virtual key

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

step() {
  printf '\n==> %s\n' "$*"
}

# Print text with every registered secret replaced (as typed, or shell-quoted).
redact() {
  local text="$1" secret quoted
  for secret in "${SECRETS[@]}"; do
    quoted="$(printf '%q' "$secret")"
    text="${text//"$quoted"/<redacted>}"
    text="${text//"$secret"/<redacted>}"
  done
  printf '%s\n' "$text"
}

# The command line as it would be typed, secrets redacted.
show() {
  local line
  line="$(printf ' %q' "$@")"
  redact "+$line"
}

# Print a command, then run it (unless --dry-run).
run() {
  show "$@"
  if [[ "$DRY_RUN" -eq 0 ]]; then
    "$@"
  fi
}

# Apply a manifest read from stdin (printed in full, secrets redacted).
apply() {
  local manifest
  manifest="$(cat)"
  redact "$(printf '+ kubectl apply -f - <<EOF\n%s\nEOF' "$manifest")"
  if [[ "$DRY_RUN" -eq 0 ]]; then
    kubectl apply -f - <<<"$manifest"
  fi
}

# Print a command and echo its output (a placeholder with --dry-run).
capture() {
  local placeholder="$1"
  shift
  show "$@" >&2
  if [[ "$DRY_RUN" -eq 0 ]]; then
    "$@"
  else
    printf '%s\n' "$placeholder"
  fi
}

cleanup() {
  local status=$?
  if [[ -n "$FORWARD_PID" ]]; then
    kill "$FORWARD_PID" 2>/dev/null || true
  fi
  if [[ "$DRY_RUN" -eq 0 && "$KEEP" -eq 0 ]]; then
    step "Tear down"
    run kind delete cluster --name "$CLUSTER" || true
  elif [[ "$KEEP" -eq 1 ]]; then
    echo "cluster kept: kind delete cluster --name $CLUSTER"
  fi
  if [[ -n "$WORKDIR" ]]; then
    rm -rf "$WORKDIR"
  fi
  exit "$status"
}

# Expect an HTTP status (and optionally a body fragment) for a request through the sidecar.
expect() {
  local name="$1" want="$2" token="$3" fragment="${4:-}"
  local -a auth=()
  if [[ -n "$token" ]]; then
    auth=(-H "Authorization: Bearer $token")
  fi
  printf '+ curl -H "Authorization: Bearer <%s>" http://127.0.0.1:%s/v1/models  # expect %s\n' \
    "$name" "$LOCAL_PORT" "$want"
  if [[ "$DRY_RUN" -eq 1 ]]; then
    return 0
  fi
  local got
  got="$(curl -sS -o "$WORKDIR/body" -w '%{http_code}' "${auth[@]}" \
    "http://127.0.0.1:$LOCAL_PORT/v1/models")"
  if [[ "$got" != "$want" ]]; then
    echo "FAIL $name: HTTP $got, expected $want: $(head -c 300 "$WORKDIR/body")" >&2
    FAILURES=$((FAILURES + 1))
  elif [[ -n "$fragment" ]] && ! grep -qi -- "$fragment" "$WORKDIR/body"; then
    echo "FAIL $name: body lacks $fragment: $(head -c 300 "$WORKDIR/body")" >&2
    FAILURES=$((FAILURES + 1))
  else
    echo "ok   $name: HTTP $got"
  fi
}

trap cleanup EXIT

step "Preflight"
if [[ "$DRY_RUN" -eq 0 ]]; then
  for tool in docker kind kubectl helm curl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (this run needs Docker and kind)" >&2; exit 1; }
  done
  [[ -x "$PYTHON" ]] || { echo "missing: $PYTHON (run make venv)" >&2; exit 1; }
fi
WORKDIR="$(mktemp -d)"
echo "workdir $WORKDIR, cluster $CLUSTER, image $IMAGE"

step "Create the kind cluster"
node_image=()
if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
  node_image=(--image "$KIND_NODE_IMAGE")
fi
run kind create cluster --name "$CLUSTER" "${node_image[@]}" --wait 180s
run kubectl config use-context "kind-$CLUSTER"

step "Build the image and load it into the cluster"
run docker build -t "$IMAGE" "$ROOT"
run kind load docker-image "$IMAGE" --name "$CLUSTER"

step "PostgreSQL for the test"
DB_PASSWORD="$(capture "<password>" "$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')"
SECRETS+=("$DB_PASSWORD")
DB_URL="postgresql://postgres:$DB_PASSWORD@postgres.$DB_NS.svc:5432/litellm"
run kubectl create namespace "$DB_NS"
apply <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres, namespace: $DB_NS}
spec:
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      containers:
        - name: postgres
          image: postgres:16-alpine
          env:
            - {name: POSTGRES_PASSWORD, value: "$DB_PASSWORD"}
            - {name: POSTGRES_DB, value: litellm}
          ports: [{containerPort: 5432}]
          readinessProbe:
            exec: {command: [pg_isready, -U, postgres, -d, litellm]}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: postgres, namespace: $DB_NS}
spec:
  selector: {app: postgres}
  ports: [{port: 5432}]
EOF
run kubectl -n "$DB_NS" rollout status deployment/postgres --timeout=180s

step "Migrate the database and create a virtual key"
one_off=(kubectl -n "$DB_NS" run --rm -i --quiet --restart=Never --image="$IMAGE"
  --image-pull-policy=Never "--env=JWTKEYMAP_DATABASE_URL=$DB_URL")
run "${one_off[@]}" jkm-migrate -- migrate
KEY="$(capture "sk-<plaintext>" "${one_off[@]}" jkm-key -- key create --team-id e2e-team | head -n 1)"
[[ -n "$KEY" ]] || { echo "no key was created" >&2; exit 1; }
SECRETS+=("$KEY")

step "Secrets: the database URL for the operator and for the sidecars, the key for the mapping"
for ns in "$SYSTEM_NS" "$APP_NS"; do
  run kubectl create namespace "$ns"
  run kubectl -n "$ns" create secret generic jwtkeymap-database "--from-literal=url=$DB_URL"
done
run kubectl -n "$APP_NS" create secret generic alice-key "--from-literal=apiKey=$KEY"

step "Install the chart"
run "$PYTHON" "$ROOT/e2e/tokens.py" keygen "$WORKDIR/keys"
values="$WORKDIR/values.yaml"
if [[ "$DRY_RUN" -eq 1 ]]; then
  public_key="  -----BEGIN PUBLIC KEY-----"
else
  public_key="$(sed 's/^/                  /' "$WORKDIR/keys/public.pem")"
fi
cat >"$values" <<EOF
image:
  repository: ${IMAGE%:*}
  tag: ${IMAGE##*:}
  pullPolicy: Never
injection:
  resolver:
    imagePullPolicy: Never
    settings:
      claim_field: email
      unregistered_client_behavior: reject
      issuers:
        - issuer: $ISSUER
          audience: litellm
          public_keys:
            - |
$public_key
EOF
echo "+ cat $values"
cat "$values"
run helm install jwtkeymap "$ROOT/charts/jwtkeymap" -n "$SYSTEM_NS" -f "$values" \
  --wait --timeout 5m

step "Apply a first JWTKeyMappingPolicy (nothing is mapped without one) and a JWTKeyMapping"
apply <<EOF
apiVersion: jwtkeymap.io/v1alpha1
kind: JWTKeyMappingPolicy
metadata: {name: e2e-app}
spec:
  namespaceSelector:
    matchLabels: {kubernetes.io/metadata.name: $APP_NS}
  issuers: ["$ISSUER"]
  claims: [{name: email, values: ["*@example.com"]}]
EOF
apply <<EOF
apiVersion: jwtkeymap.io/v1alpha1
kind: JWTKeyMapping
metadata: {name: alice, namespace: $APP_NS}
spec:
  issuer: $ISSUER
  claim: {name: email, value: alice@example.com}
  key:
    secretRef: {name: alice-key, key: apiKey}
EOF
run kubectl -n "$APP_NS" wait jwtkeymapping/alice --for=condition=Ready --timeout=120s
run kubectl get jkm -A

step "Deploy a labelled echo upstream (the injector adds the resolver in front of it)"
apply <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: $APP_NS}
spec:
  selector: {matchLabels: {app: echo}}
  template:
    metadata:
      labels: {app: echo, jwtkeymap.io/inject: "true"}
    spec:
      containers:
        - name: echo
          image: $IMAGE
          imagePullPolicy: Never
          command: [python, -c]
          args:
            - |
              from aiohttp import web
              async def echo(request):
                  return web.json_response({"path": request.path, "headers": dict(request.headers)})
              app = web.Application()
              app.router.add_route("*", "/{tail:.*}", echo)
              web.run_app(app, host="127.0.0.1", port=8080)
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: $APP_NS}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: jwtkeymap}]
EOF
run kubectl -n "$APP_NS" rollout status deployment/echo --timeout=180s
injected="$(capture "jwtkeymap-resolver" kubectl -n "$APP_NS" get pods -l app=echo \
  -o 'jsonpath={.items[0].spec.initContainers[*].name}')"
[[ "$injected" == *jwtkeymap-resolver* ]] || { echo "the resolver was not injected" >&2; exit 1; }

step "Send requests with signed JWTs through the sidecar"
printf '+ kubectl -n %s port-forward deployment/echo %s:8181 &\n' "$APP_NS" "$LOCAL_PORT"
if [[ "$DRY_RUN" -eq 0 ]]; then
  kubectl -n "$APP_NS" port-forward deployment/echo "$LOCAL_PORT:8181" >"$WORKDIR/forward.log" 2>&1 &
  FORWARD_PID=$!
  deadline=$((SECONDS + 30))
  until curl -s -o /dev/null "http://127.0.0.1:$LOCAL_PORT/healthz"; do
    ((SECONDS < deadline)) || { echo "port-forward did not come up" >&2; exit 1; }
    sleep 0.5 # poll interval
  done
fi
alice="$(capture "<alice's JWT>" "$PYTHON" "$ROOT/e2e/tokens.py" sign "$WORKDIR/keys" alice@example.com)"
bob="$(capture "<bob's JWT>" "$PYTHON" "$ROOT/e2e/tokens.py" sign "$WORKDIR/keys" bob@example.com)"
forged="$(capture "<forged JWT>" "$PYTHON" "$ROOT/e2e/tokens.py" sign "$WORKDIR/keys" alice@example.com --bad-signature)"
expect "mapped client" 200 "$alice" '"x-jwtkeymap-decision": "mapped"'
expect "no token" 401 ""
expect "forged signature" 401 "$forged"
expect "unmapped client (behavior: reject)" 403 "$bob"

step "Result"
if [[ "$FAILURES" -ne 0 ]]; then
  echo "$FAILURES check(s) failed" >&2
  exit 1
fi
if [[ "$DRY_RUN" -eq 1 ]]; then
  echo "dry run: nothing was executed"
else
  echo "all checks passed"
fi
