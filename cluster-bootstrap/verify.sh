#!/usr/bin/env bash
# Post-boot smoke check: wait until every Argo CD Application is Synced and
# Healthy and the API answers; otherwise say what is wrong and exit non-zero.
# Usage: verify.sh [TIMEOUT_SECONDS]   (default 900; runs on any VM)
# Exit codes: 0 all good, 1 not converged in time, 3 not converged and no model
# is pinned yet (the API cannot answer before the first training run pins one).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
use_admin_kubeconfig
# Every API call bounded: a control plane that stopped answering must not stall the loop.
kubectl() { command kubectl --request-timeout=20s "$@"; }

timeout=${1:-900}
api="http://$WORKER_IP:$SERVING_NODE_PORT/predictionForTomorrow"
apps_wanted=(root platform mlflow training serving monitoring)

app_state() {  # app_state NAME -> "SYNC HEALTH"
  kubectl -n argocd get application "$1" \
    -o jsonpath='{.status.sync.status} {.status.health.status}' 2>/dev/null || echo "Missing Missing"
}

pinned_version() {  # the version in the pin ConfigMap serving mounts ("null" before the first promotion)
  # The ConfigMap the Deployment names, not the newest one: after a revert the pin's
  # content (and so its hashed name) is an older ConfigMap's again.
  local name
  name=$(kubectl -n serving get deployment primer-serving \
    -o jsonpath='{.spec.template.spec.volumes[?(@.name=="pin")].configMap.name}' 2>/dev/null) || return 1
  [ -n "$name" ] || return 1
  kubectl -n serving get configmap "$name" -o jsonpath='{.data.model-version\.yaml}' 2>/dev/null \
    | sed -n 's/^version:[[:space:]]*\([^[:space:]#]*\).*/\1/p'
}

converged() {
  local app state
  for app in "${apps_wanted[@]}"; do
    state=$(app_state "$app")
    [ "$state" = "Synced Healthy" ] || return 1
  done
  curl -fsS --max-time 10 "$api" >/dev/null 2>&1
}

explain() {
  echo
  echo "Argo CD Applications (want: Synced Healthy):"
  local app state msg
  for app in "${apps_wanted[@]}"; do
    state=$(app_state "$app")
    printf '  %-10s %s\n' "$app" "$state"
    if [ "$state" != "Synced Healthy" ]; then
      msg=$(kubectl -n argocd get application "$app" -o jsonpath='{.status.operationState.message}{"\n"}{range .status.conditions[*]}{.type}: {.message}{"\n"}{end}{.status.health.message}' 2>/dev/null || true)
      [ -n "$msg" ] && printf '%s\n' "$msg" | sed 's/^/      /'
    fi
  done
  echo
  echo "Pods that are not Running/Completed:"
  kubectl get pods -A --no-headers 2>/dev/null \
    | awk '$4 != "Running" && $4 != "Completed" {print "  " $0}' || true
  echo
  echo "Recent warnings:"
  kubectl get events -A --field-selector type=Warning --sort-by=.lastTimestamp 2>/dev/null | tail -n 10 | sed 's/^/  /' || true
  echo
  if ! curl -fsS --max-time 10 -o /dev/null "$api" 2>/dev/null; then
    echo "API: $api does not answer."
  fi
  echo "Hints: 'kubectl -n argocd get applications', Argo CD UI http://$WORKER_IP:$ARGOCD_NODE_PORT,"
  echo "       training logs: kubectl -n training logs job/<name>, serving: kubectl -n serving describe pods"
}

echo "Waiting up to ${timeout}s for Argo CD (${apps_wanted[*]}) and $api ..."
deadline=$((SECONDS + timeout))
while [ "$SECONDS" -lt "$deadline" ]; do
  if converged; then
    echo "OK: every Application is Synced and Healthy and the API answers:"
    curl -fsS --max-time 20 "$api"
    echo
    exit 0
  fi
  sleep 15
done

# Serving is only Healthy with a pinned model loaded (readiness /readyz): before the
# first model is pinned there is nothing to serve, by design.
version=$(pinned_version || true)
if [ "$version" = "null" ] || [ "$version" = "~" ]; then
  echo "NOT SERVING YET: no model is pinned (promotion/model-version.yaml in Gitea: version: null)."
  echo "The first successful training run commits its winner to main (gate policy bootstrap: commit);"
  echo "later winners arrive as pull requests: http://$WORKER_IP:$GITEA_NODE_PORT/$GITEA_OWNER/$GITEA_REPO/pulls"
  echo "Training runs: kubectl -n training get jobs; logs: kubectl -n training logs job/<name>"
  explain
  exit 3
fi
echo "NOT READY after ${timeout}s."
explain
exit 1
