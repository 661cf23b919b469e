# shellcheck shell=bash
# Shared helpers for the provisioning scripts. Sourced, never executed.
# Loads versions.env so every script sees the same pinned versions and settings.

BOOTSTRAP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BOOTSTRAP_DIR/.." && pwd)"
# Shared state between VMs (join command, admin kubeconfig). Gitignored.
CLUSTER_STATE_DIR="$REPO_DIR/.cluster"
export BOOTSTRAP_DIR REPO_DIR CLUSTER_STATE_DIR

set -a
# shellcheck source-path=SCRIPTDIR source=versions.env
. "$BOOTSTRAP_DIR/versions.env"
set +a

log() { printf '\n==> [%s] %s\n' "$(hostname)" "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

require_root() { [ "$(id -u)" -eq 0 ] || die "$0 must run as root (vagrant provisions as root; otherwise use sudo)"; }

# retry N DELAY CMD...: run CMD until it succeeds, at most N times.
retry() {
  local attempts=$1 delay=$2 i
  shift 2
  for ((i = 1; i <= attempts; i++)); do
    if "$@"; then return 0; fi
    [ "$i" -lt "$attempts" ] && sleep "$delay"
  done
  return 1
}

# Bounded curl: a stalled connection fails instead of hanging the provisioning
# (connect within 20 s; abort a transfer slower than 1 KiB/s for 60 s).
CURL_LIMITS=(--connect-timeout 20 --speed-limit 1024 --speed-time 60)

# download URL DEST: fetch once (idempotent), failing loudly with the URL. Also for
# upstream manifests: the cached copy is what a re-provision applies again.
download() {
  local url=$1 dest=$2
  [ -s "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  retry 5 5 curl -fsSL "${CURL_LIMITS[@]}" --retry 3 -o "$dest.part" "$url" || die "download failed: $url"
  mv "$dest.part" "$dest"
}

# published_sha256 CHECKSUM_FILE NAME: the SHA-256 a release publishes for its asset NAME.
# Two formats: `sha256sum` output ("<hex>  NAME" or "<hex> *NAME"; containerd, runc) and
# an in-toto statement whose subject names NAME (BuildKit's <asset>.provenance.json).
published_sha256() {
  local sums=$1 name=$2
  if [[ "$sums" == *.json ]]; then
    jq -r --arg name "$name" \
      '.subject[]? | select((.name | split("/") | last) == $name) | .digest.sha256 // empty' "$sums"
  else
    awk -v name="$name" '{ f = $2; sub(/^\*/, "", f); sub(/.*\//, "", f) } f == name { print $1 }' "$sums"
  fi
}

# download_verified URL DEST CHECKSUM_URL: download URL (as `download`) and check it, cached
# copy included, against the checksum its release publishes beside it (both URLs pinned in
# versions.env). A mismatch deletes DEST and stops the provisioning.
download_verified() {
  local url=$1 dest=$2 sums_url=$3 name sums expected
  name=$(basename "$url")
  sums="$dest.${sums_url##*.}"
  download "$sums_url" "$sums"
  expected=$(published_sha256 "$sums" "$name")
  if ! [[ "$expected" =~ ^[0-9a-f]{64}$ ]]; then
    rm -f "$sums"
    die "no single SHA-256 for $name in $sums_url (found: '${expected//$'\n'/ }')"
  fi
  download "$url" "$dest"
  if ! printf '%s  %s\n' "$expected" "$dest" | sha256sum --check --strict --quiet - >&2; then
    rm -f "$dest" "$sums"
    die "checksum mismatch: $url is not the file $sums_url describes (deleted; provision again to retry)"
  fi
}

# Use the admin kubeconfig: local on the control plane, shared folder elsewhere.
use_admin_kubeconfig() {
  if [ -r /etc/kubernetes/admin.conf ]; then
    export KUBECONFIG=/etc/kubernetes/admin.conf
  elif [ -r "$CLUSTER_STATE_DIR/admin.conf" ]; then
    export KUBECONFIG="$CLUSTER_STATE_DIR/admin.conf"
  else
    die "no admin kubeconfig (/etc/kubernetes/admin.conf or $CLUSTER_STATE_DIR/admin.conf): is the control plane up?"
  fi
}

# render FILE: print FILE with ${KEY} replaced by the versions.env value of KEY.
# A tiny envsubst limited to known keys, so YAML stays valid and nothing else is touched.
render() {
  local text key
  text="$(<"$1")"
  while IFS= read -r key; do
    text="${text//\$\{$key\}/${!key}}"
  done < <(sed -n 's/^\([A-Z][A-Z0-9_]*\)=.*/\1/p' "$BOOTSTRAP_DIR/versions.env")
  if [[ "$text" =~ \$\{[A-Z][A-Z0-9_]*\} ]]; then
    die "$1: unknown placeholder ${BASH_REMATCH[0]} (not in versions.env)"
  fi
  printf '%s\n' "$text"
}

# ensure_namespace NAME: create if missing (idempotent).
ensure_namespace() {
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# secret_exists NS NAME
secret_exists() { kubectl -n "$1" get secret "$2" >/dev/null 2>&1; }

# secret_value NS NAME KEY: decoded value of one key.
secret_value() {
  kubectl -n "$1" get secret "$2" -o "jsonpath={.data.$3}" | base64 -d
}

random_password() { openssl rand -hex 16; }

# --- The code the lab runs: one commit, built once, tagged by its id ----------

IMAGE_COMPONENT=apps/components/image/kustomization.yaml

# seed_repo DEST: a new git repository at DEST holding the *committed* tree of this
# checkout, never uncommitted changes. A full clone is cloned (same commit ids). A
# shallow clone cannot be pushed to Gitea (it refuses shallow history), and a folder
# without git has no commit: both become one commit of the files, with a fixed author
# and date, so the same files always give the same commit id on every VM
# (build-image.sh on the control plane and platform.sh on the worker agree on the tag).
seed_repo() {
  local dest=$1 from
  local src=(git -c safe.directory="$REPO_DIR" -C "$REPO_DIR")
  rm -rf "$dest"
  mkdir -p "$dest"
  if "${src[@]}" rev-parse --verify -q HEAD >/dev/null 2>&1; then
    [ -z "$("${src[@]}" status --porcelain --untracked-files=no)" ] \
      || warn "uncommitted changes in $REPO_DIR stay out of the lab: it runs the last commit"
    if [ "$("${src[@]}" rev-parse --is-shallow-repository)" = false ]; then
      git -c safe.directory='*' clone --quiet --no-hardlinks "$REPO_DIR" "$dest"
      return 0
    fi
    "${src[@]}" archive HEAD | tar -x -C "$dest"
    from="one commit with the tree of $("${src[@]}" rev-parse HEAD): the checkout is shallow"
  else
    # Without lab state and secrets (.vagrant holds the VMs' SSH keys) or local runs.
    cp -a "$REPO_DIR/." "$dest"
    rm -rf "$dest/.cluster" "$dest/.vagrant" "$dest/.venv" "$dest/.primer" \
      "$dest/mlruns" "$dest/mlartifacts" "$dest/mlflow.db"
    from="the files of a checkout without git"
  fi
  git -C "$dest" init --quiet -b main
  git -C "$dest" add -A
  GIT_AUTHOR_DATE=2000-01-01T00:00:00Z GIT_COMMITTER_DATE=2000-01-01T00:00:00Z \
    git -C "$dest" -c user.name=primer-bootstrap -c user.email=bootstrap@primer.lab \
    commit --quiet -m "Seed the lab ($from)"
}

# image_tag_of REPO [REV]: the image tag for the code of REV (default HEAD): its commit id, 12 digits.
image_tag_of() { git -C "$1" rev-parse "${2:-HEAD}^{commit}" | cut -c1-12; }

# set_image_tag REPO TAG: record TAG as the image every app runs (newTag in the image
# Component), as its own commit. A revert of that commit (or of a merge holding it)
# brings back the previous tag: code rolls back with the manifests and the pin.
set_image_tag() {
  local repo=$1 tag=$2
  grep -q "^    newTag: \"$tag\"\$" "$repo/$IMAGE_COMPONENT" && return 0
  sed -Ei "s/^    newTag: .*/    newTag: \"$tag\"/" "$repo/$IMAGE_COMPONENT"
  grep -q "^    newTag: \"$tag\"\$" "$repo/$IMAGE_COMPONENT" || die "$IMAGE_COMPONENT has no newTag line to set"
  git -C "$repo" -c user.name=primer-bootstrap -c user.email=bootstrap@primer.lab \
    commit --quiet -m "Run image $tag (the code of commit $tag)" -- "$IMAGE_COMPONENT"
}

# image_in_registry TAG: the lab registry holds IMAGE_REPOSITORY:TAG.
image_in_registry() {
  curl -fsS --max-time 20 -o /dev/null \
    -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
    "http://$CONTROL_PLANE_IP:$REGISTRY_PORT/v2/${IMAGE_REPOSITORY#*/}/manifests/$1"
}

# unpin_seed REPO: in a git work tree about to seed the lab's Gitea, set the pin
# (promotion/model-version.yaml) to `version: null` and commit that, if it pins a
# version. The cluster's MLflow starts empty, so a version pinned in the checkout
# (a local `primer up` commits promotions to it) names no model there, or worse,
# a different model once the cluster has registered that many versions.
unpin_seed() {
  local repo=$1 pin=promotion/model-version.yaml
  grep -Eq '^version:[[:space:]]*[0-9]' "$repo/$pin" || return 0
  sed -Ei 's/^version:[[:space:]]*[0-9]+/version: null/' "$repo/$pin"
  git -C "$repo" -c user.name=primer-bootstrap -c user.email=bootstrap@primer.lab \
    commit --quiet -m "Seed the lab with nothing pinned (its MLflow starts empty)" -- "$pin"
}
