#!/usr/bin/env bash
# Runs once the (last) worker has joined: Gitea seeded with this checkout, the
# bootstrap-only Secrets, Argo CD, and the root Application. Then Argo CD takes
# over everything under apps/. Idempotent: existing Secrets, users and repos are
# kept (re-running never rotates credentials or overwrites git history).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
use_admin_kubeconfig

gitea_api="http://$WORKER_IP:$GITEA_NODE_PORT/api/v1"

log "waiting for the nodes to be Ready"
kubectl wait --for=condition=Ready nodes --all --timeout=600s

log "namespaces"
for ns in gitea argocd mlflow training serving; do ensure_namespace "$ns"; done

log "bootstrap Secrets (random, generated once, never in git)"
if ! secret_exists gitea gitea-admin; then
  password=$(random_password)
  kubectl -n gitea create secret generic gitea-admin \
    --from-literal=username="$GITEA_OWNER" --from-literal=password="$password" >/dev/null
fi
if ! secret_exists mlflow postgres-credentials; then
  # Hex: safe inside the postgresql:// URI MLflow assembles from these keys.
  password=$(random_password)
  kubectl -n mlflow create secret generic postgres-credentials \
    --from-literal=POSTGRES_USER=mlflow --from-literal=POSTGRES_DB=mlflow \
    --from-literal=POSTGRES_PASSWORD="$password" >/dev/null
fi
# The replay clock starts when the lab is born (one simulated day per 5 minutes).
if ! kubectl -n training get configmap replay-clock >/dev/null 2>&1; then
  kubectl -n training create configmap replay-clock \
    --from-literal=PRIMER_REPLAY_EPOCH="$(date -u +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
fi

log "Gitea ($GITEA_IMAGE)"
render "$BOOTSTRAP_DIR/manifests/gitea.yaml" | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl -n gitea rollout status deployment/gitea --timeout=900s
retry 60 5 curl -fsS --max-time 10 "$gitea_api/version" >/dev/null || die "Gitea API does not answer at $gitea_api"

gitea_user=$(secret_value gitea gitea-admin username)
gitea_password=$(secret_value gitea gitea-admin password)
# Bounded: an exec stream that stalls must not hang the provisioning forever.
gitea_cli() { timeout 120 kubectl -n gitea exec deploy/gitea -c gitea -- gitea "$@"; }

admins=$(gitea_cli admin user list --admin)
if ! awk -v user="$gitea_user" 'NR > 1 && $2 == user {found = 1} END {exit !found}' <<<"$admins"; then
  log "Gitea admin user $gitea_user"
  gitea_cli admin user create --admin --username "$gitea_user" --password "$gitea_password" \
    --email "$gitea_user@primer.lab" --must-change-password=false >/dev/null
fi

repo_api="$gitea_api/repos/$GITEA_OWNER/$GITEA_REPO"
if ! curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" "$repo_api" >/dev/null 2>&1; then
  log "Gitea repository $GITEA_OWNER/$GITEA_REPO"
  curl -fsS --max-time 30 -u "$gitea_user:$gitea_password" -H 'Content-Type: application/json' \
    -d "{\"name\":\"$GITEA_REPO\",\"private\":true,\"default_branch\":\"main\",\"auto_init\":false}" \
    "$gitea_api/user/repos" >/dev/null || die "could not create repository $GITEA_OWNER/$GITEA_REPO in Gitea"
fi

# Seed only an empty repository: later commits (promotions, rollbacks) live in Gitea.
if ! curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" "$repo_api/branches/main" >/dev/null 2>&1; then
  log "seeding Gitea with this checkout (HEAD of $REPO_DIR -> main)"
  seed=$(mktemp -d)
  trap 'rm -rf "$seed"' EXIT
  if git -c safe.directory="$REPO_DIR" -C "$REPO_DIR" rev-parse --verify HEAD >/dev/null 2>&1; then
    git -c safe.directory="$REPO_DIR" clone --quiet --no-hardlinks "$REPO_DIR" "$seed/repo"
  else
    # Not a git checkout (e.g. a downloaded archive): snapshot the files.
    # Without lab state and secrets (.vagrant holds the VMs' SSH keys) or local runs.
    cp -a "$REPO_DIR/." "$seed/repo"
    rm -rf "$seed/repo/.cluster" "$seed/repo/.vagrant" "$seed/repo/.venv" "$seed/repo/.primer" \
      "$seed/repo/mlruns" "$seed/repo/mlartifacts" "$seed/repo/mlflow.db"
    git -C "$seed/repo" init --quiet -b main
    git -C "$seed/repo" add -A
    git -C "$seed/repo" -c user.name=primer-bootstrap -c user.email=bootstrap@primer.lab \
      commit --quiet -m "Seed from the checkout"
  fi
  unpin_seed "$seed/repo"
  # Credentials in a one-command header, not in the URL (git echoes URLs in errors).
  basic=$(printf '%s:%s' "$gitea_user" "$gitea_password" | base64 -w0)
  timeout 600 git -C "$seed/repo" -c http.extraHeader="Authorization: Basic $basic" push --quiet \
    "http://$WORKER_IP:$GITEA_NODE_PORT/$GITEA_OWNER/$GITEA_REPO.git" HEAD:refs/heads/main \
    || die "git push of the checkout to Gitea failed"
fi

new_token() {  # new_token NAME SCOPES -> prints the token
  gitea_cli admin user generate-access-token --username "$gitea_user" \
    --token-name "$1-$(date +%s)" --scopes "$2" --raw | tr -d '[:space:]'
}
# token_works SECRET_NS SECRET_NAME KEY: the stored token still opens the repository.
# Kept Secrets can outlive Gitea's data (e.g. the worker holding its volume was
# rebuilt): a token Gitea no longer knows is replaced, a working one is kept.
token_works() {
  local stored
  secret_exists "$1" "$2" || return 1
  stored=$(secret_value "$1" "$2" "$3") || return 1
  [ -n "$stored" ] && curl -fsS --max-time 10 -o /dev/null -H "Authorization: token $stored" "$repo_api"
}
if ! token_works training primer-forge PRIMER_FORGE_TOKEN; then
  log "trainer access token -> Secret training/primer-forge"
  # Into a variable first: a failing $(...) inside an argument would not stop the script.
  token=$(new_token trainer write:repository,write:issue,read:user)
  [ -n "$token" ] || die "Gitea returned an empty token for the trainer"
  kubectl -n training create secret generic primer-forge --dry-run=client -o yaml \
    --from-literal=PRIMER_FORGE_TOKEN="$token" | kubectl apply -f - >/dev/null
fi
if ! token_works argocd repo-gitea password; then
  log "Argo CD repository Secret (read-only token)"
  token=$(new_token argocd read:repository)
  [ -n "$token" ] || die "Gitea returned an empty token for Argo CD"
  # Created with its label in one step: a Secret without it would be ignored by Argo CD.
  kubectl -n argocd create secret generic repo-gitea --dry-run=client -o yaml \
    --from-literal=type=git --from-literal=url="$GITEA_REPO_URL" \
    --from-literal=username="$gitea_user" \
    --from-literal=password="$token" \
    | kubectl label --local -f - argocd.argoproj.io/secret-type=repository -o yaml \
    | kubectl apply -f - >/dev/null
fi

log "Argo CD $ARGOCD_VERSION"
# Through the download cache (bounded, retried; a re-provision applies the same file).
argocd_manifest=/var/cache/primer-bootstrap/argocd-$ARGOCD_VERSION-install.yaml
download "$ARGOCD_INSTALL_URL" "$argocd_manifest"
kubectl apply -n argocd --server-side --force-conflicts -f "$argocd_manifest" >/dev/null
# Our keys only (own field manager): re-applying install.yaml leaves them alone.
kubectl apply --server-side --force-conflicts --field-manager=primer-bootstrap \
  -f "$BOOTSTRAP_DIR/manifests/argocd-cm.yaml" -f "$BOOTSTRAP_DIR/manifests/argocd-cmd-params-cm.yaml" >/dev/null
render "$BOOTSTRAP_DIR/manifests/argocd-server-service.yaml" \
  | kubectl apply --server-side --force-conflicts --field-manager=primer-bootstrap -f - >/dev/null
# Most of argocd-cm is watched live, but timeout.reconciliation reaches the
# application controller and the repo server as an env var (configMapKeyRef in
# install.yaml), and server.insecure (cmd-params) is read at start: restart all
# three so a first install and a re-provision both run with our settings.
kubectl -n argocd rollout restart deployment/argocd-server deployment/argocd-repo-server >/dev/null
kubectl -n argocd rollout restart statefulset/argocd-application-controller >/dev/null
kubectl -n argocd rollout status deployment/argocd-server --timeout=900s
kubectl -n argocd rollout status deployment/argocd-repo-server --timeout=900s
kubectl -n argocd rollout status statefulset/argocd-application-controller --timeout=900s

log "root Application (app of apps: apps/root)"
render "$BOOTSTRAP_DIR/manifests/root-application.yaml" | kubectl apply --server-side --force-conflicts -f - >/dev/null

# No extra first Job (kubectl create job --from=cronjob): the CronJob controller does not
# count such a Job as active, so concurrencyPolicy: Forbid would not stop the next tick
# from starting a second trainer beside it. The */5 schedule starts training within 5 minutes.
log "training starts at the CronJob's next 5-minute tick once Argo CD has synced apps/training"
log "platform bootstrapped; Argo CD now reconciles apps/ from Gitea"
