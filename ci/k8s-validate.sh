#!/usr/bin/env bash
# Validate k8s/: every overlay and cluster add-on renders, validates strictly (Kubernetes 1.30 + newest schemas,
# CRD schemas), passes checkov, meets the project's policies, and its PromQL passes promtool.
# Installs checkov into its own venv when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
# Pinned: a new checkov release brings new checks, which should arrive as a reviewed change.
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}

if ! command -v kubectl >/dev/null; then
  echo "k8s-validate: kubectl not found; install kubectl >= 1.27 (Kustomize v5)" >&2
  exit 2
fi
kubectl version --client

if [[ ! -x "$CHECKOV_VENV/bin/checkov" ]]; then
  # Never into the project's venv: checkov pins packages (openai 0.28, …) that break the services' tests.
  echo "k8s-validate: installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
  python3 -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install -q "checkov==$CHECKOV_VERSION"
fi
"$CHECKOV_VENV/bin/checkov" --version

for folder in k8s/overlays/*/ k8s/cluster/*/; do
  printf 'k8s-validate: %s renders %s objects\n' "$folder" "$(kubectl kustomize "$folder" | grep -c '^kind:')"
done

if ! command -v promtool >/dev/null; then
  echo "k8s-validate: promtool not found; install Debian's prometheus package (apt-get install prometheus)" >&2
  exit 2
fi
promtool --version 2>&1 | head -1

# tests/monitoring: the monitoring component's alerts, dashboard and adapter rule, checked by promtool.
exec "$PYTHON" -m pytest tests/k8s tests/monitoring -m k8s -q "$@"
