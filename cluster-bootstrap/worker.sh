#!/usr/bin/env bash
# Worker: join the cluster with the command the control plane left in .cluster/.
# Usage: worker.sh NODE_NAME         Idempotent: a joined node is left alone.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root

NODE_NAME=${1:?usage: worker.sh NODE_NAME}

if [ -s /etc/kubernetes/kubelet.conf ]; then
  log "$NODE_NAME already joined: skipping kubeadm join"
  exit 0
fi
join="$CLUSTER_STATE_DIR/join.sh"
[ -s "$join" ] || die "$join is missing: provision the control plane first (vagrant up control-plane)"

log "joining the cluster as $NODE_NAME"
# join.sh holds 'kubeadm join ... --token ... --discovery-token-ca-cert-hash ...'.
retry 5 10 bash "$join" --node-name "$NODE_NAME" \
  || die "kubeadm join failed; on the control plane: kubeadm token create --print-join-command"
log "$NODE_NAME joined"
