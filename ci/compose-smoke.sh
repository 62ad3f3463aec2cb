#!/usr/bin/env bash
# Builds the four CPU images with podman, runs the compose stack (CI override: embedded store, no Qdrant image),
# ingests a document through the published port, asserts a cited answer, tears everything down (also on failure),
# and writes image sizes, start→ready times and the script's duration to bench/results/compose_smoke.json.
#
#   ci/compose-smoke.sh                 # as root on a Debian bookworm machine; installs podman etc. if missing
#   SMOKE_BUDGET_SECONDS=900 ci/compose-smoke.sh    # a warm build cache needs only a few minutes
#
# Uses `docker compose` instead of podman-compose when SMOKE_ENGINE=docker (an engine with registry access).
set -euo pipefail

BUDGET="${SMOKE_BUDGET_SECONDS:-3600}"
# The whole run under one time budget: re-exec under timeout(1); the EXIT trap still tears down on SIGTERM.
if [[ -z "${RAGLINE_SMOKE_TIMED:-}" ]]; then
  export RAGLINE_SMOKE_TIMED=1
  exec timeout --kill-after=60 "$BUDGET" "$0" "$@"
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SCRIPT_START=$(date +%s.%N)
ENGINE="${SMOKE_ENGINE:-podman}"
TAG="${RAGLINE_TAG:-0.1.0-dev}"
PROJECT="${SMOKE_PROJECT:-ragline-ci}"
CI_DIR="${RAGLINE_CI_DIR:-/var/tmp/ragline-ci}"
COMPOSE_VENV="${COMPOSE_VENV:-$CI_DIR/venv-compose}"
PORT="${SMOKE_API_PORT:-18080}"
READY_LIMIT="${SMOKE_READY_LIMIT_SECONDS:-60}"
READY_WAIT="${SMOKE_READY_WAIT_SECONDS:-300}"
RESULT="${SMOKE_RESULT:-bench/results/compose_smoke.json}"
SERVICES=(embedder retriever generator api)
# Targets from issue 7: every CPU image under 1.5 GB, the api under 300 MB (decimal units, as podman prints).
declare -A SIZE_LIMIT=([embedder]=1500000000 [retriever]=1500000000 [generator]=1500000000 [api]=300000000)

mkdir -p "$CI_DIR/ready" "$(dirname "$RESULT")"
rm -f "$CI_DIR"/ready/*
log() { printf '%s compose-smoke: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
elapsed() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$2"; }

# --- tools ------------------------------------------------------------------------------------------------
BUILD_ARGS=()
if [[ "$ENGINE" == podman ]]; then
  ci/podman-base.sh
  if [[ ! -x "$COMPOSE_VENV/bin/podman-compose" ]]; then
    log "installing podman-compose 1.6.0 into $COMPOSE_VENV"
    python3 -m venv "$COMPOSE_VENV"
    "$COMPOSE_VENV/bin/pip" install -q podman-compose==1.6.0
  fi
  # No registry here: pip reaches PyPI only with the host's CA bundle; torch's CPU wheel comes from a local folder
  # (the PyTorch index is not reachable) when one is there, else from the PyTorch CPU index as everywhere else.
  BUILD_ARGS+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  if compgen -G "${TORCH_WHEEL_DIR:-/opt/wheels}/torch-*+cpu-*.whl" >/dev/null; then
    BUILD_ARGS+=(-v "${TORCH_WHEEL_DIR:-/opt/wheels}:/opt/wheels:ro"
      --build-arg TORCH_INDEX_URL=https://pypi.org/simple --build-arg PIP_FIND_LINKS=/opt/wheels)
  fi
  COMPOSE=("$COMPOSE_VENV/bin/podman-compose" --in-pod false -p "$PROJECT"
    -f docker-compose.yml -f deploy/compose/ci.override.yml)
  UP_ARGS=(up -d --no-build --pull never)
  CTR=podman
else
  COMPOSE=(docker compose -p "$PROJECT" -f docker-compose.yml -f deploy/compose/ci.override.yml)
  UP_ARGS=(up -d --no-build --pull never)
  CTR=docker
fi

# --- teardown, always ---------------------------------------------------------------------------------------
export RAGLINE_API_KEY="smoke-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export RAGLINE_API_PORT="$PORT" RAGLINE_API_BIND=127.0.0.1 RAGLINE_TAG="$TAG" RAGLINE_RELEASE=compose-smoke
STACK_UP=0
teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if ((STACK_UP)); then
    if ((rc != 0)); then
      for svc in "${SERVICES[@]}"; do
        log "last log lines of $svc:"
        "$CTR" logs --tail 30 "$(container_of "$svc")" 2>&1 | sed "s/^/  [$svc] /" >&2 || true
      done
    fi
    log "tearing the stack down"
    "${COMPOSE[@]}" down -v -t 10 >/dev/null 2>&1 || log "teardown reported an error (ignored)"
  fi
  log "finished rc=$rc in $(elapsed "$SCRIPT_START" "$(date +%s.%N)") s"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

container_of() {
  "$CTR" ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -n1
}

# --- build -------------------------------------------------------------------------------------------------
declare -A BUILD_SECONDS SIZE
for svc in "${SERVICES[@]}"; do
  log "building ragline/$svc:$TAG"
  t0=$(date +%s.%N)
  "$CTR" build "${BUILD_ARGS[@]}" -f "services/$svc/Dockerfile" -t "ragline/$svc:$TAG" . \
    >"$CI_DIR/build-$svc.log" 2>&1 || { tail -40 "$CI_DIR/build-$svc.log" >&2; exit 1; }
  BUILD_SECONDS[$svc]=$(elapsed "$t0" "$(date +%s.%N)")
  SIZE[$svc]=$("$CTR" image inspect --format '{{.Size}}' "ragline/$svc:$TAG")
  log "ragline/$svc:$TAG: $((SIZE[$svc] / 1000000)) MB, built in ${BUILD_SECONDS[$svc]} s"
done

# --- up and wait for readiness -------------------------------------------------------------------------------
log "starting the stack (project $PROJECT, api on 127.0.0.1:$PORT)"
"${COMPOSE[@]}" down -v -t 5 >/dev/null 2>&1 || true
STACK_UP=1
UP_START=$(date +%s.%N)
"${COMPOSE[@]}" "${UP_ARGS[@]}" >"$CI_DIR/up.log" 2>&1 || { cat "$CI_DIR/up.log" >&2; exit 1; }

# Podman 4.3 runs no healthchecks by itself (no systemd timers) and podman-compose ignores
# `condition: service_healthy`: poll each container's own compose healthcheck (python → /readyz) instead.
wait_ready() {
  local svc=$1 ctr deadline
  ctr=$(container_of "$svc")
  deadline=$(($(date +%s) + READY_WAIT))
  while (($(date +%s) < deadline)); do
    if [[ "$ENGINE" == podman ]]; then
      podman healthcheck run "$ctr" >/dev/null 2>&1 && { date +%s.%N >"$CI_DIR/ready/$svc"; return; }
    else
      [[ "$(docker inspect --format '{{.State.Health.Status}}' "$ctr")" == healthy ]] \
        && { date +%s.%N >"$CI_DIR/ready/$svc"; return; }
    fi
    [[ "$("$CTR" inspect --format '{{.State.Running}}' "$ctr")" == true ]] || { log "$svc exited"; return 1; }
    sleep 0.5
  done
  log "$svc not ready after ${READY_WAIT} s"
  return 1
}
pids=()
for svc in "${SERVICES[@]}"; do wait_ready "$svc" & pids+=($!); done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
((failed == 0)) || exit 1

declare -A READY
for svc in "${SERVICES[@]}"; do
  if [[ "$ENGINE" == podman ]]; then
    started_epoch=$(podman inspect --format '{{.State.StartedAt.UnixNano}}' "$(container_of "$svc")" \
      | python3 -c "import sys; print(int(sys.stdin.read()) / 1e9)")
  else
    started_epoch=$(docker inspect --format '{{.State.StartedAt}}' "$(container_of "$svc")" | python3 -c "
import re, sys
from datetime import datetime
print(datetime.fromisoformat(re.sub(r'(\.\d{6})\d*', r'\1', sys.stdin.read().strip()).replace('Z', '+00:00')).timestamp())")
  fi
  READY[$svc]=$(elapsed "$started_epoch" "$(cat "$CI_DIR/ready/$svc")")
  log "$svc ready ${READY[$svc]} s after its start"
done
STACK_READY_SECONDS=$(elapsed "$UP_START" "$(sort -n "$CI_DIR"/ready/* | tail -n1)")

# --- the real request path ---------------------------------------------------------------------------------------
log "ingesting a document and asking a question through 127.0.0.1:$PORT"
QUERY_JSON=$(python3 ci/smoke_client.py --base-url "http://127.0.0.1:$PORT" --key "$RAGLINE_API_KEY")
log "cited answer: $QUERY_JSON"

# --- report ----------------------------------------------------------------------------------------------------
TOTAL=$(elapsed "$SCRIPT_START" "$(date +%s.%N)")
export QUERY_JSON TOTAL BUDGET ENGINE TAG READY_LIMIT STACK_READY_SECONDS
for svc in "${SERVICES[@]}"; do
  export "SIZE_$svc=${SIZE[$svc]}" "BUILD_$svc=${BUILD_SECONDS[$svc]}" "READY_$svc=${READY[$svc]}" \
    "LIMIT_$svc=${SIZE_LIMIT[$svc]}"
done
python3 - "$RESULT" <<'EOF'
import json, os, platform, subprocess, sys, time

services = ["embedder", "retriever", "generator", "api"]
engine = os.environ["ENGINE"]
version = subprocess.run([engine, "--version"], capture_output=True, text=True).stdout.strip()
images = {
    s: {
        "image": f"ragline/{s}:{os.environ['TAG']}",
        "size_bytes": int(os.environ[f"SIZE_{s}"]),
        "size_mb": round(int(os.environ[f"SIZE_{s}"]) / 1e6),
        "limit_mb": round(int(os.environ[f"LIMIT_{s}"]) / 1e6),
        "build_seconds": float(os.environ[f"BUILD_{s}"]),
    }
    for s in services
}
limit = float(os.environ["READY_LIMIT"])
ready = {s: float(os.environ[f"READY_{s}"]) for s in services}
result = {
    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "engine": version,
    "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
    "images": images,
    "ready_seconds": ready,
    "ready_limit_seconds": limit,
    "stack_ready_seconds": float(os.environ["STACK_READY_SECONDS"]),
    "query": json.loads(os.environ["QUERY_JSON"]),
    "targets_met": {
        "image_sizes": all(i["size_bytes"] < int(os.environ[f"LIMIT_{s}"]) for s, i in images.items()),
        "ready_within_limit": all(v <= limit for v in ready.values()),
    },
    "script_seconds": float(os.environ["TOTAL"]),
    "budget_seconds": int(os.environ["BUDGET"]),
}
with open(sys.argv[1], "w") as fh:
    json.dump(result, fh, indent=2)
    fh.write("\n")
print(json.dumps({"images_mb": {s: i["size_mb"] for s, i in images.items()}, "ready_seconds": ready,
                  "targets_met": result["targets_met"], "script_seconds": result["script_seconds"]}))
if not all(result["targets_met"].values()):
    sys.exit("targets missed: see " + sys.argv[1])
EOF
log "wrote $RESULT; total $TOTAL s (budget $BUDGET s)"
