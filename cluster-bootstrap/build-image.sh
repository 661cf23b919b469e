#!/usr/bin/env bash
# Build the project image from a *commit* (never a working tree) with BuildKit inside
# the control-plane VM, push it to the lab registry tagged by that commit's id, and
# (BRANCH mode) record the tag in git, so the code a pod runs is always a reviewed commit
# and a revert rolls code and pin back together.
#
#   build-image.sh           the checkout's last commit (/vagrant HEAD: what the lab is seeded
#                            with; control-plane.sh runs this at bootstrap). Prints the tag.
#   build-image.sh BRANCH    BRANCH of the lab's Gitea repository: builds its tip, then pushes
#                            a commit "Run image <tag>" (newTag in apps/components/image) onto
#                            BRANCH. A pull request from BRANCH then carries code and tag together;
#                            BRANCH=main deploys at once (the admin may push to main).
#   vagrant ssh control-plane -c 'sudo /vagrant/cluster-bootstrap/build-image.sh my-change'
# A tag is built once: a tag already in the registry is not rebuilt (same commit, same code).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root  # the BuildKit socket is root-only

branch=${1:-}
command -v buildctl >/dev/null || die "buildctl not found: run control-plane.sh first (installs BuildKit $BUILDKIT_VERSION)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gitea_git="http://$WORKER_IP:$GITEA_NODE_PORT/$GITEA_OWNER/$GITEA_REPO.git"
gitea_git() {  # git with the Gitea admin's credentials in a one-command header, never in a URL
  local basic
  basic=$(printf '%s:%s' "$(secret_value gitea gitea-admin username)" "$(secret_value gitea gitea-admin password)" | base64 -w0)
  timeout 600 git -c http.extraHeader="Authorization: Basic $basic" "$@"
}

if [ -z "$branch" ]; then
  seed_repo "$work/repo"
else
  use_admin_kubeconfig
  gitea_git clone --quiet --branch "$branch" "$gitea_git" "$work/repo" \
    || die "could not clone branch $branch of $gitea_git (push your branch to the lab's Gitea first)"
fi
tag=$(image_tag_of "$work/repo")
image="$IMAGE_REPOSITORY:$tag"

if image_in_registry "$tag"; then
  log "$image is already in the registry (built from commit $tag): not rebuilding"
else
  log "building $image from commit $tag ($(git -C "$work/repo" log -1 --format=%s))"
  # The context is the commit's files only (git archive): nothing uncommitted reaches an image.
  mkdir "$work/context"
  git -C "$work/repo" archive "$tag" | tar -x -C "$work/context"
  buildctl build \
    --frontend dockerfile.v0 \
    --local context="$work/context" \
    --local dockerfile="$work/context" \
    --opt filename=Dockerfile \
    --output "type=image,name=$image,push=true,registry.insecure=true"
  image_in_registry "$tag" || die "pushed $image but the registry does not list it"
  log "pushed $image"
fi

if [ -n "$branch" ]; then
  set_image_tag "$work/repo" "$tag"
  gitea_git -C "$work/repo" push --quiet origin "HEAD:refs/heads/$branch" \
    || die "could not push the image tag commit to $branch"
  log "$branch now runs image $tag; merge it (pull request) to deploy, or it is deployed already if $branch is main"
fi
echo "$tag"
