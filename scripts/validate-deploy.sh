#!/usr/bin/env bash
# Schema checks of docker/ that need no cluster and no Docker engine: the Kubernetes manifests
# against the Kubernetes OpenAPI schemas (strict: unknown fields are errors) and the compose
# file against the compose-spec schema. Installs kubernetes-validate and check-jsonschema from
# PyPI into a temporary virtualenv (they bring their schemas with them). The cargo tests
# (`cargo test --test it deploy_`) check what schemas cannot: that the files agree with each
# other and with tether.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
k8s_version="${K8S_VERSION:-1.30.0}"

venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate check-jsonschema

cd "$root/docker"
manifests=(k8s/namespace.yaml k8s/redis.yaml k8s/app.yaml k8s/tether-config.yaml k8s/tether.yaml
  k8s/secret.example.yaml k8s/sidecar/app-with-tether.yaml)
"$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "${manifests[@]}"
echo "validate-deploy: ${#manifests[@]} manifest files valid for Kubernetes $k8s_version"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.test.yml
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize k8s >/dev/null
  echo "validate-deploy: kubectl kustomize docker/k8s ok"
fi
