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
for ns in gitea argocd mlflow training serving monitoring; do ensure_namespace "$ns"; done

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
# The prediction log: its own database and role on MLflow's PostgreSQL (apps/mlflow's
# PostSync Job creates both from this Secret, on every sync), and the SQLAlchemy URL its
# clients read as PRIMER_PREDICTION_LOG: the service (serving) and `primer monitor`
# (training). One password, generated once; the URL Secrets are rewritten from it on every
# run, so they always agree. Hex: safe inside the URL.
if ! secret_exists mlflow prediction-log-db; then
  password=$(random_password)
  kubectl -n mlflow create secret generic prediction-log-db \
    --from-literal=PREDICTION_LOG_USER="$PREDICTION_LOG_USER" --from-literal=PREDICTION_LOG_DB="$PREDICTION_LOG_DB" \
    --from-literal=PREDICTION_LOG_PASSWORD="$password" >/dev/null
fi
log_password=$(secret_value mlflow prediction-log-db PREDICTION_LOG_PASSWORD)
[ -n "$log_password" ] || die "Secret mlflow/prediction-log-db has no PREDICTION_LOG_PASSWORD"
log_url="postgresql+psycopg://$PREDICTION_LOG_USER:$log_password@$PREDICTION_LOG_HOST:5432/$PREDICTION_LOG_DB"
for ns in serving training; do
  kubectl -n "$ns" create secret generic prediction-log --dry-run=client -o yaml \
    --from-literal=PRIMER_PREDICTION_LOG="$log_url" | kubectl apply -f - >/dev/null
done
# Grafana's admin (apps/monitoring); everyone else views the dashboard anonymously.
if ! secret_exists monitoring grafana-admin; then
  password=$(random_password)
  kubectl -n monitoring create secret generic grafana-admin \
    --from-literal=username=admin --from-literal=password="$password" >/dev/null
fi
# The replay clock starts when the lab is born (one simulated day per 5 minutes). Training
# and serving follow the same clock: serving gets a copy of training's epoch (rewritten on
# every run, so the two can never differ).
if ! kubectl -n training get configmap replay-clock >/dev/null 2>&1; then
  kubectl -n training create configmap replay-clock \
    --from-literal=PRIMER_REPLAY_EPOCH="$(date -u +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
fi
epoch=$(kubectl -n training get configmap replay-clock -o jsonpath='{.data.PRIMER_REPLAY_EPOCH}')
[ -n "$epoch" ] || die "ConfigMap training/replay-clock has no PRIMER_REPLAY_EPOCH"
kubectl -n serving create configmap replay-clock --dry-run=client -o yaml \
  --from-literal=PRIMER_REPLAY_EPOCH="$epoch" | kubectl apply -f - >/dev/null

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

# The code the lab runs: the checkout's last commit (build-image.sh builds the same
# commit on the control plane, in the background since control-plane.sh).
seed=$(mktemp -d)
trap 'rm -rf "$seed"' EXIT
seed_repo "$seed/repo"
image_tag=$(image_tag_of "$seed/repo")

# Seed only an empty repository: later commits (promotions, rollbacks, code) live in Gitea.
if ! curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" "$repo_api/branches/main" >/dev/null 2>&1; then
  log "seeding Gitea with commit $image_tag of $REPO_DIR (nothing pinned, image $image_tag)"
  unpin_seed "$seed/repo"
  set_image_tag "$seed/repo" "$image_tag"
  # Credentials in a one-command header, not in the URL (git echoes URLs in errors).
  basic=$(printf '%s:%s' "$gitea_user" "$gitea_password" | base64 -w0)
  timeout 600 git -C "$seed/repo" -c http.extraHeader="Authorization: Basic $basic" push --quiet \
    "http://$WORKER_IP:$GITEA_NODE_PORT/$GITEA_OWNER/$GITEA_REPO.git" HEAD:refs/heads/main \
    || die "git push of the checkout to Gitea failed"
else
  # Seeded before (a re-provision): the lab runs the tag main names, not the checkout's
  # newest commit (which control-plane.sh did not build this time).
  image_tag=$(curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" \
    "$repo_api/raw/$IMAGE_COMPONENT?ref=main" | sed -n 's/^    newTag: "\(.*\)"$/\1/p') || image_tag=""
  [ -n "$image_tag" ] || die "could not read newTag of $IMAGE_COMPONENT on main in Gitea"
fi

# The trainer's own account: not an admin, a collaborator with write access to this one
# repository. Its token (below) can push branches and open pull requests, nothing else.
bot_users=$(gitea_cli admin user list)
if ! awk -v user="$GITEA_BOT_USER" 'NR > 1 && $2 == user {found = 1} END {exit !found}' <<<"$bot_users"; then
  log "Gitea bot user $GITEA_BOT_USER (not an admin)"
  gitea_cli admin user create --username "$GITEA_BOT_USER" --password "$(random_password)" \
    --email "$GITEA_BOT_USER@primer.lab" --must-change-password=false >/dev/null
fi
curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" -X PUT -H 'Content-Type: application/json' \
  -d '{"permission":"write"}' "$repo_api/collaborators/$GITEA_BOT_USER" >/dev/null \
  || die "could not make $GITEA_BOT_USER a collaborator of $GITEA_OWNER/$GITEA_REPO"

# main is protected: only the admin pushes or merges. The bot reaches main through pull
# requests, with one exception: it may push a change of the pin file alone, which the
# gate does only while nothing is pinned (policy bootstrap: commit), so the first model
# serves without waiting for a human. Every later pin is a pull request the admin merges.
protection=$(cat <<JSON
{"rule_name":"main","enable_push":true,"enable_push_whitelist":true,
 "push_whitelist_usernames":["$gitea_user"],
 "enable_merge_whitelist":true,"merge_whitelist_usernames":["$gitea_user"],
 "unprotected_file_patterns":"$GITEA_BOT_DIRECT_PATHS"}
JSON
)
if curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" "$repo_api/branch_protections/main" >/dev/null 2>&1; then
  method=PATCH; url="$repo_api/branch_protections/main"
else
  method=POST; url="$repo_api/branch_protections"
fi
curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" -X "$method" -H 'Content-Type: application/json' \
  -d "$protection" "$url" >/dev/null || die "could not protect branch main of $GITEA_OWNER/$GITEA_REPO"

new_token() {  # new_token NAME SCOPES -> prints a token of the bot user
  gitea_cli admin user generate-access-token --username "$GITEA_BOT_USER" \
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
  # Repository: clone, push branches, open/close pull requests; issue: comment on them.
  token=$(new_token trainer "$GITEA_BOT_TOKEN_SCOPES")
  [ -n "$token" ] || die "Gitea returned an empty token for the trainer"
  kubectl -n training create secret generic primer-forge --dry-run=client -o yaml \
    --from-literal=PRIMER_FORGE_TOKEN="$token" | kubectl apply -f - >/dev/null
fi
if ! token_works argocd repo-gitea password; then
  log "Argo CD repository Secret (read-only token)"
  token=$(new_token argocd "$GITEA_ARGOCD_TOKEN_SCOPES")
  [ -n "$token" ] || die "Gitea returned an empty token for Argo CD"
  # Created with its label in one step: a Secret without it would be ignored by Argo CD.
  kubectl -n argocd create secret generic repo-gitea --dry-run=client -o yaml \
    --from-literal=type=git --from-literal=url="$GITEA_REPO_URL" \
    --from-literal=username="$GITEA_BOT_USER" \
    --from-literal=password="$token" \
    | kubectl label --local -f - argocd.argoproj.io/secret-type=repository -o yaml \
    | kubectl apply -f - >/dev/null
fi


log "Argo CD $ARGOCD_VERSION"
# Through the download cache (bounded, retried; a re-provision applies the same file).
# Applied through a kustomization over the pinned install.yaml: requests and limits for
# every Argo CD container (upstream sets none) and no replicas for the parts the lab does
# not use (patches/argocd-resources.yaml; the memory budget is in docs/cluster.md).
argocd_dir=/var/cache/primer-bootstrap/argocd-$ARGOCD_VERSION
argocd_manifest=$argocd_dir/install.yaml
download "$ARGOCD_INSTALL_URL" "$argocd_manifest"
cp "$BOOTSTRAP_DIR/patches/argocd-resources.yaml" "$argocd_dir/argocd-resources.yaml"
printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' \
  'resources: [install.yaml]' 'patches: [{path: argocd-resources.yaml}]' >"$argocd_dir/kustomization.yaml"
kubectl apply -n argocd --server-side --force-conflicts -k "$argocd_dir" >/dev/null
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

log "Gitea webhook -> Argo CD (a push is synced at once, not at the next poll)"
# Argo CD reads Gitea's push events with its Gogs parser (Gitea sends the Gogs headers
# and signature); the shared secret lives only in argocd-secret.
if [ -z "$(secret_value argocd argocd-secret 'webhook\.gogs\.secret' 2>/dev/null)" ]; then
  webhook_secret=$(random_password)
  kubectl -n argocd patch secret argocd-secret --type merge \
    -p "{\"stringData\":{\"webhook.gogs.secret\":\"$webhook_secret\"}}" >/dev/null
fi
webhook_secret=$(secret_value argocd argocd-secret 'webhook\.gogs\.secret')
[ -n "$webhook_secret" ] || die "argocd-secret has no webhook.gogs.secret"
hooks=$(curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" "$repo_api/hooks") \
  || die "could not list the webhooks of $GITEA_OWNER/$GITEA_REPO"
if ! jq -e --arg url "$ARGOCD_WEBHOOK_URL" 'any(.[]; .config.url == $url)' <<<"$hooks" >/dev/null; then
  jq -n --arg url "$ARGOCD_WEBHOOK_URL" --arg secret "$webhook_secret" \
    '{type: "gitea", active: true, events: ["push"], branch_filter: "main",
      config: {url: $url, content_type: "json", secret: $secret}}' \
    | curl -fsS --max-time 20 -u "$gitea_user:$gitea_password" -H 'Content-Type: application/json' \
      -d @- "$repo_api/hooks" >/dev/null || die "could not create the Gitea webhook to $ARGOCD_WEBHOOK_URL"
fi

log "Argo CD projects (what each Application may deploy; the default project allows nothing)"
render "$BOOTSTRAP_DIR/manifests/appprojects.yaml" \
  | kubectl apply --server-side --force-conflicts --field-manager=primer-bootstrap -f - >/dev/null

# The apps run image $image_tag: wait for the background build (control-plane.sh) before
# Argo CD starts pods that would otherwise sit in ImagePullBackOff.
log "waiting for image $IMAGE_REPOSITORY:$image_tag (building on the control plane)"
retry 240 10 image_in_registry "$image_tag" \
  || die "image $IMAGE_REPOSITORY:$image_tag is not in the registry after 40 min: on the control plane, journalctl -u primer-image-build"

log "root Application (app of apps: apps/root)"
render "$BOOTSTRAP_DIR/manifests/root-application.yaml" | kubectl apply --server-side --force-conflicts -f - >/dev/null

# The first training run as soon as MLflow is healthy, not at the next 5-minute tick.
# The CronJob controller counts only the Jobs in its status.active toward
# concurrencyPolicy: Forbid, so this Job (made from its template, owned by it) is recorded
# there too: the next tick waits for it instead of starting a second trainer beside it.
log "first training run once MLflow is healthy"
app_healthy() {
  [ "$(kubectl -n argocd get application "$1" -o jsonpath='{.status.health.status}' 2>/dev/null)" = Healthy ]
}
retry 90 10 app_healthy mlflow || die "MLflow is not Healthy after 15 min: sudo /vagrant/cluster-bootstrap/verify.sh says why"
retry 60 5 kubectl -n training get cronjob primer-train >/dev/null 2>&1 || die "Argo CD has not created the training CronJob"
if [ -z "$(kubectl -n training get jobs -l app.kubernetes.io/name=primer-train -o name)" ]; then
  kubectl -n training create job primer-train-first --from=cronjob/primer-train >/dev/null
  uid=$(kubectl -n training get job primer-train-first -o jsonpath='{.metadata.uid}')
  kubectl -n training patch cronjob primer-train --subresource=status --type=merge -p \
    "{\"status\":{\"active\":[{\"apiVersion\":\"batch/v1\",\"kind\":\"Job\",\"namespace\":\"training\",\"name\":\"primer-train-first\",\"uid\":\"$uid\"}]}}" >/dev/null
fi
log "platform bootstrapped; Argo CD now reconciles apps/ from Gitea"
