#!/usr/bin/env bash
# Print how to reach and log in to everything (the end of `vagrant up`).
# Passwords are read from the cluster's Secrets: none is stored in git.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
use_admin_kubeconfig

# After `vagrant halt` + `vagrant up` the API server may still be starting.
retry 30 10 kubectl get --raw /readyz >/dev/null 2>&1 || die "the Kubernetes API does not answer (control plane VM up?)"

argocd_password=$(secret_value argocd argocd-initial-admin-secret password 2>/dev/null || echo "<not created yet: rerun this script>")
gitea_user=$(secret_value gitea gitea-admin username)
gitea_password=$(secret_value gitea gitea-admin password)
api="http://$WORKER_IP:$SERVING_NODE_PORT/predictionForTomorrow"
# The dashboard provisioned from git (apps/monitoring/grafana/dashboards/primer.json, uid primer).
grafana="http://$WORKER_IP:$GRAFANA_NODE_PORT/d/primer"
grafana_user=$(secret_value monitoring grafana-admin username 2>/dev/null || echo "<not created yet: rerun platform.sh>")
grafana_password=$(secret_value monitoring grafana-admin password 2>/dev/null || echo "<not created yet: rerun platform.sh>")
# The UI's machine-learning view (MLflow 3 opens GenAI pages otherwise): see contract/ui.py.
mlflow_models="http://$WORKER_IP:$MLFLOW_NODE_PORT/#/models/spy-direction?workflowType=machine_learning"

cat <<MSG

==================================== MLOps primer lab ====================================
 Argo CD   http://$WORKER_IP:$ARGOCD_NODE_PORT        login: admin / $argocd_password
 Gitea     http://$WORKER_IP:$GITEA_NODE_PORT        login: $gitea_user / $gitea_password
           repo: http://$WORKER_IP:$GITEA_NODE_PORT/$GITEA_OWNER/$GITEA_REPO (promotion PRs land here)
 MLflow    $mlflow_models        (no login; the experiment's runs are one click away)
 API       $api
 Grafana   $grafana        (no login to view; admin: $grafana_user / $grafana_password)
 Prometheus http://$WORKER_IP:$PROMETHEUS_NODE_PORT/targets        (no login; what is scraped)

 First call (answers a few minutes after the first training run commits the first pin; later winners arrive as PRs):
   curl '$api'
 Status:   vagrant ssh control-plane -c 'sudo /vagrant/cluster-bootstrap/verify.sh'
 kubectl:  vagrant ssh control-plane, then kubectl ... (or KUBECONFIG=.cluster/admin.conf on the host)
==========================================================================================
MSG
