#!/bin/sh
# Creates one factory-scope token per factory pod of deploy/k8s/factory.yaml
# (gantry-factory-0 .. gantry-factory-N-1) and a reader token for Prometheus, and
# prints the two Secrets that hold them as YAML on stdout, for `kubectl apply -f -`.
#
# Usage: k8s-factory-tokens.sh N
#   GANTRY_URL, GANTRY_TOKEN  a server and an admin token, e.g. through
#                             `kubectl -n gantry port-forward svc/gantry-server 7700`
#   NAMESPACE                 default gantry
#
# Token names are unique forever: run it once, then add pods with a larger N only after
# revoking or renaming the tokens it made (`gantry token ls`, `gantry token revoke`).
set -eu

n="${1:?usage: $0 N (number of factory pods: the HPA's maxReplicas)}"
ns="${NAMESPACE:-gantry}"
: "${GANTRY_TOKEN:?GANTRY_TOKEN must hold an admin token}"

secret_of() {
  # The secret alone on stdout; the CLI's note goes to stderr.
  gantry token create --name "$1" --scope "$2"
}

printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: gantry-factory-tokens\n  namespace: %s\ntype: Opaque\nstringData:\n' "$ns"
i=0
while [ "$i" -lt "$n" ]; do
  pod="gantry-factory-$i"
  printf '  %s: "%s"\n' "$pod" "$(secret_of "$pod" factory)"
  i=$((i + 1))
done
printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: gantry-metrics-token\n  namespace: %s\ntype: Opaque\nstringData:\n' "$ns"
printf '  token: "%s"\n' "$(secret_of prometheus reader)"
