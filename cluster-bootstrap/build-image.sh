#!/usr/bin/env bash
# Build the project image from the repository's Dockerfile with BuildKit inside
# the control-plane VM, and push it to the lab registry. Run after code changes:
#   vagrant ssh control-plane -c 'sudo /vagrant/cluster-bootstrap/build-image.sh'
# The name and tag come from versions.env (IMAGE_REPOSITORY, IMAGE_TAG); the apps
# use the same values through apps/components/image (checked here and by tests).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root  # the BuildKit socket is root-only

image="$IMAGE_REPOSITORY:$IMAGE_TAG"
component="$REPO_DIR/apps/components/image/kustomization.yaml"

# Refuse to push a tag the manifests do not use: the pods would never see it.
grep -q "newName: $IMAGE_REPOSITORY\$" "$component" \
  || die "$component does not set newName: $IMAGE_REPOSITORY (versions.env IMAGE_REPOSITORY); make them agree"
grep -q "newTag: \"$IMAGE_TAG\"\$" "$component" \
  || die "$component does not set newTag: \"$IMAGE_TAG\" (versions.env IMAGE_TAG); make them agree"

command -v buildctl >/dev/null || die "buildctl not found: run control-plane.sh first (installs BuildKit $BUILDKIT_VERSION)"

log "building $image from $REPO_DIR/Dockerfile"
buildctl build \
  --frontend dockerfile.v0 \
  --local context="$REPO_DIR" \
  --local dockerfile="$REPO_DIR" \
  --opt filename=Dockerfile \
  --output "type=image,name=$image,push=true,registry.insecure=true"

curl -fsS --max-time 20 "http://$CONTROL_PLANE_IP:$REGISTRY_PORT/v2/${IMAGE_REPOSITORY#*/}/manifests/$IMAGE_TAG" \
  -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
  >/dev/null || die "pushed $image but the registry does not list it"
log "pushed $image"
echo "Pods pull it on their next start (imagePullPolicy: Always). To roll running ones now:"
echo "  kubectl -n serving rollout restart deployment/primer-serving && kubectl -n mlflow rollout restart deployment/mlflow"
