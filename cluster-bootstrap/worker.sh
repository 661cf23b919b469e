#!/usr/bin/env bash
# Worker: join the cluster with the command the control plane left in .cluster/.
# Usage: worker.sh NODE_NAME         Idempotent: a joined node is left alone.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root

NODE_NAME=${1:?usage: worker.sh NODE_NAME}

if [ -s /etc/kubernetes/kubelet.conf ]; then
  log "$NODE_NAME already joined: skipping kubeadm join"
  exit 0
fi
join="$CLUSTER_STATE_DIR/join-command"
# The token in join-command expires 24 h after the control plane was provisioned: a
# worker added or rebuilt later would fail with it. With the admin kubeconfig at hand,
# ask for a fresh one (kubeadm takes the CA hash from that kubeconfig); else use the file.
fresh=""
if [ -r "$CLUSTER_STATE_DIR/admin.conf" ]; then
  fresh=$(timeout 60 kubeadm token create --print-join-command --kubeconfig "$CLUSTER_STATE_DIR/admin.conf" 2>/dev/null) \
    || { warn "could not create a fresh join token; using $join"; fresh=""; }
fi
if [ -n "$fresh" ]; then
  read -r -a join_args <<<"$fresh"
else
  [ -s "$join" ] || die "$join is missing: provision the control plane first (vagrant up control-plane)"
  read -r -a join_args <"$join"
fi
[ "${join_args[0]:-} ${join_args[1]:-}" = "kubeadm join" ] \
  || die "$join does not hold a 'kubeadm join' command: re-run control-plane.sh (vagrant provision control-plane)"

join_once() {
  # A half-done join leaves files that make the next attempt's preflight fail.
  "${join_args[@]}" --node-name "$NODE_NAME" || { kubeadm reset -f >/dev/null 2>&1; return 1; }
}

log "joining the cluster as $NODE_NAME"
retry 5 10 join_once \
  || die "kubeadm join failed; a fresh command: vagrant provision control-plane --provision-with control-plane"
log "$NODE_NAME joined"
