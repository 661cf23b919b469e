#!/usr/bin/env bash
# Control plane: kubeadm init, Calico on the private network, local-path storage,
# the lab image registry, BuildKit, and the first build of the project image (in the
# background: platform.sh waits for it).
# Workloads (Gitea, Argo CD, the apps) come later, from platform.sh, once a
# worker has joined. Idempotent: re-running skips what is already done.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root

mkdir -p "$CLUSTER_STATE_DIR"

if [ ! -s /etc/kubernetes/admin.conf ]; then
  log "kubeadm init (Kubernetes $K8S_VERSION, API on $CONTROL_PLANE_IP)"
  kubeadm init \
    --kubernetes-version "v$K8S_VERSION" \
    --apiserver-advertise-address "$CONTROL_PLANE_IP" \
    --control-plane-endpoint "$CONTROL_PLANE_IP:6443" \
    --pod-network-cidr "$POD_CIDR" \
    --service-cidr "$SERVICE_CIDR" \
    --node-name control-plane
else
  log "kubeadm already initialised: skipping init"
fi
export KUBECONFIG=/etc/kubernetes/admin.conf

# kubectl for the vagrant user, and for the other VMs through the shared folder.
install -d -o vagrant -g vagrant /home/vagrant/.kube 2>/dev/null || install -d /home/vagrant/.kube
install -m 0600 /etc/kubernetes/admin.conf /home/vagrant/.kube/config
chown vagrant:vagrant /home/vagrant/.kube/config 2>/dev/null || true
# The shared folder is vboxsf: modes there are whatever the host allows (a chmod
# may fail, e.g. on Windows hosts), so copy then restrict as far as it lets us.
cp /etc/kubernetes/admin.conf "$CLUSTER_STATE_DIR/admin.conf.tmp"
chmod 0600 "$CLUSTER_STATE_DIR/admin.conf.tmp" 2>/dev/null || true
mv -f "$CLUSTER_STATE_DIR/admin.conf.tmp" "$CLUSTER_STATE_DIR/admin.conf"

log "join command for workers -> $CLUSTER_STATE_DIR/join-command"
# A fresh token on every run: the default one expires after 24h. One line,
# 'kubeadm join HOST:6443 --token ... --discovery-token-ca-cert-hash sha256:...'.
kubeadm token create --print-join-command >"$CLUSTER_STATE_DIR/join-command.tmp"
chmod 0600 "$CLUSTER_STATE_DIR/join-command.tmp" 2>/dev/null || true
mv -f "$CLUSTER_STATE_DIR/join-command.tmp" "$CLUSTER_STATE_DIR/join-command"

log "Calico $CALICO_VERSION (node IPs from $NODE_CIDR, pods in $POD_CIDR)"
calico_dir=/var/cache/primer-bootstrap/calico-$CALICO_VERSION
mkdir -p "$calico_dir"
download "$CALICO_MANIFEST_URL" "$calico_dir/calico.yaml"
# Kustomize overlay on the upstream manifest: pick the private NIC (the NAT NIC is
# 10.0.2.15 on every VM), use our pod CIDR, and route natively inside the subnet
# (CrossSubnet) so NodePort traffic keeps node source IPs (see apps/mlflow policy).
cat >"$calico_dir/kustomization.yaml" <<'EOF'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - calico.yaml
patches:
  - path: calico-node-env.yaml
EOF
cat >"$calico_dir/calico-node-env.yaml" <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: calico-node
  namespace: kube-system
spec:
  template:
    spec:
      containers:
        - name: calico-node
          env:
            - name: IP_AUTODETECTION_METHOD
              value: cidr=$NODE_CIDR
            - name: CALICO_IPV4POOL_CIDR
              value: $POD_CIDR
            - name: CALICO_IPV4POOL_IPIP
              value: CrossSubnet
EOF
kubectl apply --server-side --force-conflicts -k "$calico_dir" >/dev/null
kubectl -n kube-system rollout status daemonset/calico-node --timeout=600s

log "local-path-provisioner $LOCAL_PATH_VERSION as the default StorageClass"
# Through the download cache (bounded, retried; a re-provision applies the same file).
local_path_manifest=/var/cache/primer-bootstrap/local-path-$LOCAL_PATH_VERSION.yaml
download "$LOCAL_PATH_MANIFEST_URL" "$local_path_manifest"
kubectl apply --server-side --force-conflicts -f "$local_path_manifest" >/dev/null
kubectl patch storageclass local-path --type merge \
  -p '{"metadata":{"annotations":{"storageclass.kubernetes.io/is-default-class":"true"}}}' >/dev/null
# ...and primer-retain (same provisioner, reclaimPolicy Retain) for MLflow's data.
kubectl apply --server-side --force-conflicts -f "$BOOTSTRAP_DIR/manifests/storage.yaml" >/dev/null

log "image registry on $CONTROL_PLANE_IP:$REGISTRY_PORT"
install -d -o 1000 -g 1000 /var/lib/primer-registry
render "$BOOTSTRAP_DIR/manifests/registry.yaml" | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl -n registry rollout status deployment/registry --timeout=600s
retry 30 2 curl -fsS --max-time 5 "http://$CONTROL_PLANE_IP:$REGISTRY_PORT/v2/" >/dev/null \
  || die "registry does not answer on http://$CONTROL_PLANE_IP:$REGISTRY_PORT/v2/"

log "BuildKit $BUILDKIT_VERSION (builds the project image inside the VM, no Docker)"
cache=/var/cache/primer-bootstrap
if [ "$(/usr/local/bin/buildkitd --version 2>/dev/null | awk '{print $3}')" != "v$BUILDKIT_VERSION" ]; then
  download_verified "$BUILDKIT_URL" "$cache/buildkit-$BUILDKIT_VERSION.tar.gz" "$BUILDKIT_CHECKSUM_URL"
  tar -C /usr/local -xzf "$cache/buildkit-$BUILDKIT_VERSION.tar.gz"
fi
mkdir -p /etc/buildkit
cat >/etc/buildkit/buildkitd.toml <<EOF
# Generated by cluster-bootstrap/control-plane.sh
[worker.oci]
  enabled = true
[worker.containerd]
  enabled = false
[registry."$CONTROL_PLANE_IP:$REGISTRY_PORT"]
  http = true
  insecure = true
EOF
cat >/etc/systemd/system/buildkitd.service <<'EOF'
[Unit]
Description=BuildKit daemon (builds the primer image)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/buildkitd --config /etc/buildkit/buildkitd.toml --oci-worker-net host
Restart=on-failure

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable buildkitd >/dev/null 2>&1
systemctl restart buildkitd
retry 30 1 /usr/local/bin/buildctl debug workers >/dev/null || die "buildkitd did not start (journalctl -u buildkitd)"

# The image build is the longest step (base image and wheels over the network): started
# here in the background, it runs while the worker boots and joins and Gitea and Argo CD
# install; platform.sh waits for its tag only before handing the apps to Argo CD.
# Through bash: the exec bit does not survive every checkout (zip downloads, some synced folders).
if systemctl is-active --quiet primer-image-build.service; then
  log "the image build is already running (journalctl -u primer-image-build)"
else
  systemctl reset-failed primer-image-build.service >/dev/null 2>&1 || true
  systemd-run --quiet --unit=primer-image-build --description="Build the primer image (build-image.sh)" \
    bash "$BOOTSTRAP_DIR/build-image.sh"
  log "building the project image in the background: journalctl -u primer-image-build -f"
fi

log "control plane ready; workers join with $CLUSTER_STATE_DIR/join-command"
