#!/usr/bin/env bash
# Every node: kernel prerequisites, containerd (systemd cgroups, trusts the lab
# registry), kubeadm/kubelet/kubectl from pkgs.k8s.io, kubelet on the private NIC.
# Usage: node-common.sh NODE_IP        Idempotent: safe to re-run (vagrant provision).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root

NODE_IP=${1:?usage: node-common.sh NODE_IP}
export DEBIAN_FRONTEND=noninteractive

log "OS packages"
apt-get update -qq
apt-get install -y -qq apt-transport-https ca-certificates curl gpg git jq openssl conntrack socat >/dev/null

log "swap off (kubelet refuses to run with swap by default)"
swapoff -a
sed -ri '/\sswap\s/s/^([^#])/#\1/' /etc/fstab

log "kernel modules and sysctls for pod networking"
cat >/etc/modules-load.d/k8s.conf <<'EOF'
overlay
br_netfilter
EOF
modprobe overlay
modprobe br_netfilter
cat >/etc/sysctl.d/99-kubernetes.conf <<'EOF'
net.bridge.bridge-nf-call-iptables  = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward                 = 1
EOF
sysctl --system >/dev/null

log "containerd $CONTAINERD_VERSION and runc $RUNC_VERSION (release binaries, pinned)"
cache=/var/cache/primer-bootstrap
mkdir -p "$cache"
if [ "$(/usr/local/bin/containerd --version 2>/dev/null | awk '{print $3}')" != "v$CONTAINERD_VERSION" ]; then
  download_verified "$CONTAINERD_URL" "$cache/containerd-$CONTAINERD_VERSION.tar.gz" "$CONTAINERD_CHECKSUM_URL"
  tar -C /usr/local -xzf "$cache/containerd-$CONTAINERD_VERSION.tar.gz"
fi
download_verified "$RUNC_URL" "$cache/runc-$RUNC_VERSION" "$RUNC_CHECKSUM_URL"
install -m 0755 "$cache/runc-$RUNC_VERSION" /usr/local/sbin/runc
download "$CONTAINERD_SERVICE_URL" "$cache/containerd-$CONTAINERD_VERSION.service"
install -D -m 0644 "$cache/containerd-$CONTAINERD_VERSION.service" /usr/local/lib/systemd/system/containerd.service

mkdir -p /etc/containerd
install -m 0644 "$BOOTSTRAP_DIR/containerd/config.toml" /etc/containerd/config.toml

# Trust the lab registry on the control plane over plain HTTP (private network only).
registry="$CONTROL_PLANE_IP:$REGISTRY_PORT"
mkdir -p "/etc/containerd/certs.d/$registry"
cat >"/etc/containerd/certs.d/$registry/hosts.toml" <<EOF
server = "http://$registry"

[host."http://$registry"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
EOF
systemctl daemon-reload
systemctl enable containerd >/dev/null 2>&1
systemctl restart containerd
# (Capture first: with pipefail, `cmd | grep -q` can fail when grep exits early.)
effective=$(/usr/local/bin/containerd config dump)
grep -q 'SystemdCgroup = true' <<<"$effective" \
  || die "containerd does not run with SystemdCgroup = true (see /etc/containerd/config.toml)"
cat >/etc/crictl.yaml <<'EOF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
EOF

log "kubeadm, kubelet, kubectl $K8S_VERSION from pkgs.k8s.io ($K8S_MINOR)"
install -d -m 0755 /etc/apt/keyrings
# Download first (bounded, retried), then dearmor: a failed fetch never leaves a
# half-written keyring that the -s check below would take for a good one.
download "${K8S_APT_URL}Release.key" "$cache/kubernetes-$K8S_MINOR-Release.key"
if [ ! -s /etc/apt/keyrings/kubernetes-apt-keyring.gpg ]; then
  gpg --batch --yes --dearmor -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg "$cache/kubernetes-$K8S_MINOR-Release.key"
fi
echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] $K8S_APT_URL /" >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
# A node already in the cluster is upgraded with `kubeadm upgrade`, one minor at a time,
# control plane first: installing a newer kubelet under it would break the node.
installed=$(dpkg-query -W -f='${Version}' kubelet 2>/dev/null || true)
if [ -s /etc/kubernetes/kubelet.conf ] && [ -n "$installed" ] && [ "${installed%%-*}" != "$K8S_VERSION" ]; then
  die "this node runs kubelet ${installed%%-*}, versions.env says $K8S_VERSION: upgrade with kubeadm (docs/cluster.md, 'Kubernetes version'), or rebuild the lab (vagrant destroy -f && vagrant up)"
fi
apt-mark unhold kubelet kubeadm kubectl >/dev/null 2>&1 || true
apt-get install -y -qq --allow-downgrades \
  "kubelet=${K8S_VERSION}-*" "kubeadm=${K8S_VERSION}-*" "kubectl=${K8S_VERSION}-*" >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null

# Every VirtualBox NAT NIC is 10.0.2.15: the kubelet must advertise the private IP.
echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" >/etc/default/kubelet
systemctl enable kubelet >/dev/null 2>&1
if [ -s /var/lib/kubelet/config.yaml ]; then
  systemctl restart kubelet
fi

# Resolve node names without DNS (kubeadm preflight, logs).
sed -i '/# primer-lab$/d' /etc/hosts
echo "$CONTROL_PLANE_IP control-plane # primer-lab" >>/etc/hosts
for ((i = 0; i < WORKER_COUNT; i++)); do
  echo "${WORKER_IP%.*}.$(( ${WORKER_IP##*.} + i )) worker-$((i + 1)) # primer-lab" >>/etc/hosts
done

log "node prerequisites done (node IP $NODE_IP)"
