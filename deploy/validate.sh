#!/usr/bin/env bash
# Validates deploy/ offline:
#   1. every Kubernetes manifest under deploy/kubernetes/ with
#      kubernetes-validate --strict, for Kubernetes 1.29 (the first release
#      with native sidecars on by default) and the newest release it ships;
#      a kind it has no schema for counts as a failure;
#   2. every Istio object in them (the YAML embedded in ConfigMaps, and any
#      networking.istio.io document of their own) with `meshd validate`,
#      one run per ConfigMap or file so references between them resolve
#      (errors and warnings both fail);
#   3. that the Grafana dashboard is well-formed JSON.
# Exits non-zero on any problem.
#
# Needs: python3 with kubernetes-validate (pip install kubernetes-validate,
# which brings PyYAML) and a meshd binary: $MESHD, else target/debug/meshd.
set -euo pipefail
cd "$(dirname "$0")/.."

MESHD=${MESHD:-target/debug/meshd}
OLDEST=1.29.0
status=0
fail() { echo "FAIL: $*"; status=1; }

python3 -c "import kubernetes_validate, yaml" 2>/dev/null || { echo "kubernetes-validate not found: pip install kubernetes-validate"; exit 2; }
[ -x "$MESHD" ] || { echo "meshd binary not found at $MESHD (set MESHD or cargo build)"; exit 2; }

mapfile -t manifests < <(find deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
[ "${#manifests[@]}" -gt 0 ] || { echo "no manifests under deploy/kubernetes"; exit 2; }

# The newest Kubernetes version this kubernetes-validate has schemas for.
NEWEST=$(python3 - <<'EOF'
import os, re, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
versions = {m.group(1) for m in (re.match(r"v(\d+\.\d+\.\d+)-local-strict$", n) for n in os.listdir(d)) if m}
print(max(versions, key=lambda v: tuple(map(int, v.split(".")))))
EOF
)

echo "== kubernetes-validate --strict ($OLDEST, $NEWEST): ${#manifests[@]} files"
for version in $OLDEST $NEWEST; do
  out=$(python3 -m kubernetes_validate --strict -k "$version" "${manifests[@]}" 2>&1) || fail "kubernetes-validate $version"
  # Unknown kinds are only warned about, with exit 0: not validated is a failure here.
  if grep -E '^(WARN|ERROR)' <<<"$out"; then
    fail "kubernetes-validate $version reported problems"
  fi
  echo "$(grep -c '^INFO .* passed' <<<"$out" || true) resources passed for Kubernetes $version"
done

echo "== meshd validate (Istio objects)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One directory per ConfigMap (its *.yaml / *.yml keys) and per manifest
# file holding Istio documents directly.
python3 - "$work" "${manifests[@]}" <<'EOF'
import os, sys, yaml
out, files = sys.argv[1], sys.argv[2:]
for path in files:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    base = path.replace("/", "_").rsplit(".", 1)[0]
    direct = [d for d in docs if str(d.get("apiVersion", "")).split("/")[0].endswith("istio.io")]
    if direct:
        os.makedirs(os.path.join(out, base), exist_ok=True)
        with open(os.path.join(out, base, "objects.yaml"), "w") as f:
            yaml.safe_dump_all(direct, f)
        with open(os.path.join(out, base, ".label"), "w") as f:
            f.write(path)
    for d in docs:
        if d.get("kind") != "ConfigMap":
            continue
        keys = {k: v for k, v in (d.get("data") or {}).items() if k.endswith((".yaml", ".yml"))}
        if not keys:
            continue
        target = os.path.join(out, base + "__configmap_" + d["metadata"]["name"])
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, ".label"), "w") as f:
            f.write(f"{path} ConfigMap {d['metadata']['name']}")
        for key, text in keys.items():
            with open(os.path.join(target, key), "w") as f:
                f.write(text)
EOF
groups=0
for dir in "$work"/*/; do
  [ -d "$dir" ] || continue
  groups=$((groups + 1))
  name=$(cat "$dir/.label")
  count=$(python3 -c 'import sys, yaml, glob
n = sum(1 for p in glob.glob(sys.argv[1] + "/*") for d in yaml.safe_load_all(open(p)) if d and str(d.get("apiVersion", "")).split("/")[0].endswith("istio.io"))
print(n)' "$dir" 2>/dev/null) || count="?"   # unparsable: meshd validate says why
  if [ "$count" = 0 ]; then
    fail "$name: no Istio objects"
    continue
  fi
  rc=0
  out=$("$MESHD" validate "$dir" 2>&1) || rc=$?
  out=$(sed "s|${dir}|(${name}) |g; s|^|     |" <<<"$out")
  if [ "$rc" -ne 0 ]; then
    echo "$out"
    fail "$name: meshd validate exited $rc"
  elif grep -Eq '[1-9][0-9]* warning' <<<"$out"; then
    # A warning (an undefined subset, a field not applied) is a mistake in
    # an example: refused here too.
    echo "$out"
    fail "$name: meshd validate warned"
  else
    echo "ok   $name: $count Istio objects ($(tail -n1 <<<"$out" | sed 's/^ *//'))"
  fi
done
[ "$groups" -gt 0 ] || fail "no Istio objects found in deploy/kubernetes"

echo "== Grafana dashboards"
for dashboard in deploy/grafana/*.json; do
  [ -e "$dashboard" ] || continue
  if python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d.get("panels"), "no panels"' "$dashboard"; then
    echo "ok   $dashboard"
  else
    fail "$dashboard"
  fi
done

if [ "$status" -eq 0 ]; then
  echo "deploy/ valid"
else
  echo "deploy/ has problems (see FAIL lines)"
fi
exit "$status"
