"""Downloads during provisioning: every release binary is checked against the checksum its
project publishes beside it (versions.env pins both URLs), every other download is an
exception argued in docs/cluster.md, and lib.sh's check really rejects a wrong file.

The check itself runs here for real: bash sources lib.sh and downloads over file:// URLs
(curl, sha256sum, jq and awk as in the VMs) laid out like the upstream releases.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.cluster.support import BOOTSTRAP, REPO, require_tool

DOC = REPO / "docs" / "cluster.md"
_CALL = re.compile(r"^\s*(download|download_verified)\s+(.+)$", re.MULTILINE)
_KEY = re.compile(r'"\$\{?([A-Z][A-Z0-9_]*)\}?')


def _calls() -> list[tuple[str, str, list[str]]]:
    """(script, function, [versions.env keys of its arguments]) for every download in the scripts."""
    out = []
    for script in sorted(BOOTSTRAP.glob("*.sh")):
        text = script.read_text()
        if script.name == "lib.sh":
            text = re.sub(r"^download(_verified)?\(\) \{.*?^\}", "", text, flags=re.MULTILINE | re.DOTALL)
        for function, args in _CALL.findall(text):
            keys = [m.group(1) for m in _KEY.finditer(args)]
            out.append((script.name, function, keys))
    return out


def _doc_section(title: str) -> str:
    text = DOC.read_text()
    assert f"## {title}\n" in text, f"docs/cluster.md has no section {title!r}"
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _doc_tables() -> tuple[set[str], set[str]]:
    """Keys of the verified table and of the exceptions table in docs/cluster.md."""
    section = _doc_section("Downloads and their checksums")
    tables = re.split(r"\n\n(?=[^|])", section)
    keyed = [set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", t, re.MULTILINE)) for t in tables]
    keyed = [k for k in keyed if k]
    assert len(keyed) == 2, "expected two tables (verified, exceptions) keyed by versions.env names"
    return keyed[0], keyed[1]


def test_every_download_is_verified_or_an_argued_exception(lab) -> None:
    calls = _calls()
    verified_doc, exceptions_doc = _doc_tables()
    assert {c[0] for c in calls} >= {"node-common.sh", "control-plane.sh", "platform.sh"}
    verified, plain = set(), set()
    for script, function, keys in calls:
        assert keys, f"{script}: {function} of a URL that is not a versions.env key"
        url_key = keys[0]
        assert url_key in lab, f"{script}: {function} ${url_key}: not in versions.env"
        if function == "download_verified":
            stem = url_key.removesuffix("_URL")
            assert keys[-1] == f"{stem}_CHECKSUM_URL", f"{script}: {url_key} checked against {keys[-1]}"
            verified.add(url_key)
        else:
            plain.add(url_key)
    # Checksum files are published in the same release, pinned next to the binary.
    for key in verified:
        url, sums = lab[key], lab[key.removesuffix("_URL") + "_CHECKSUM_URL"]
        assert sums.startswith("https://") and sums.rsplit("/", 1)[0] == url.rsplit("/", 1)[0], (key, sums)
    # Every release asset pinned in versions.env is downloaded with its checksum.
    release_assets = {k for k, v in lab.items() if k.endswith("_URL") and "/releases/download/" in v
                      and not k.endswith("_CHECKSUM_URL")}
    assert release_assets == verified, f"release binaries without a checksum check: {release_assets - verified}"
    checksum_keys = {k for k in lab if k.endswith("_CHECKSUM_URL")}
    assert checksum_keys == {k.removesuffix("_URL") + "_CHECKSUM_URL" for k in verified}, "unused checksum URLs"
    # The docs list exactly what the scripts do.
    assert verified_doc == verified, f"docs/cluster.md's verified downloads differ: {verified_doc ^ verified}"
    assert exceptions_doc == plain, (f"downloads without a checksum not argued in docs/cluster.md: "
                                     f"{plain - exceptions_doc}; argued but not downloaded: {exceptions_doc - plain}")


# --- lib.sh's download_verified, run ----------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(tmp: Path, asset: str, sums: str) -> subprocess.CompletedProcess[str]:
    """download_verified file://tmp/release/ASSET into tmp/cache against file://tmp/release/SUMS."""
    for tool in ("curl", "jq", "sha256sum"):
        require_tool(tool, f"apt-get install {tool}")
    release = tmp / "release"
    script = (f'set -euo pipefail; . "{BOOTSTRAP}/lib.sh"; '
              f'download_verified "file://{release}/{asset}" "{tmp}/cache/asset" "file://{release}/{sums}"')
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


def _release(tmp: Path, files: dict[str, bytes | str]) -> None:
    (tmp / "release").mkdir(exist_ok=True)
    for name, data in files.items():
        path = tmp / "release" / name
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)


TARBALL = b"containerd release tarball \x00\x01"
RUNC = b"\x7fELF runc amd64"


@pytest.mark.parametrize("asset, data, sums, text", [
    ("containerd-2.2.3-linux-amd64.tar.gz", TARBALL, "containerd-2.2.3-linux-amd64.tar.gz.sha256sum",
     f"{_sha(TARBALL)}  containerd-2.2.3-linux-amd64.tar.gz\n"),
    ("runc.amd64", RUNC, "runc.sha256sum",
     f"{_sha(b'386')}  runc.386\n{_sha(RUNC)}  runc.amd64\n{_sha(b'arm')} *runc.arm64\n{_sha(b'x')}  runc.tar.xz\n"),
    ("runc.amd64", RUNC, "runc.sha256sum", f"{_sha(RUNC)} *runc.amd64\n"),  # binary-mode marker
    ("buildkit-v0.29.0.linux-amd64.tar.gz", TARBALL, "buildkit-v0.29.0.linux-amd64.provenance.json",
     json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": "https://slsa.dev/provenance/v0.2",
                 "subject": [{"name": "buildkit-v0.29.0.linux-amd64.tar.gz", "digest": {"sha256": _sha(TARBALL)}}],
                 "predicate": {}})),
])
def test_download_verified_checks_the_published_checksum(tmp_path, asset, data, sums, text) -> None:
    _release(tmp_path, {asset: data, sums: text})
    proc = _fetch(tmp_path, asset, sums)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cache" / "asset").read_bytes() == data
    # A re-provision checks the cached copy again: a file changed on disk stops it and is deleted.
    (tmp_path / "cache" / "asset").write_bytes(data + b"!")
    proc = _fetch(tmp_path, asset, sums)
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "asset").exists()


def test_download_verified_stops_on_a_swapped_file(tmp_path) -> None:
    name = "runc.amd64"
    _release(tmp_path, {name: RUNC + b"tampered", "runc.sha256sum": f"{_sha(RUNC)}  {name}\n"})
    proc = _fetch(tmp_path, name, "runc.sha256sum")
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "asset").exists()


@pytest.mark.parametrize("sums, text", [
    ("runc.sha256sum", f"{_sha(RUNC)}  runc.arm64\n"),  # the asset is not named
    ("runc.sha256sum", f"{_sha(RUNC)}  runc.amd64\n{_sha(RUNC)}  runc.amd64\n"),  # named twice
    ("runc.sha256sum", "<html>rate limited</html>\n"),  # not a checksum file
    ("x.provenance.json", json.dumps({"subject": [{"name": "other.tar.gz", "digest": {"sha256": _sha(RUNC)}}]})),
])
def test_download_verified_stops_without_a_single_published_checksum(tmp_path, sums, text) -> None:
    _release(tmp_path, {"runc.amd64": RUNC, sums: text})
    proc = _fetch(tmp_path, "runc.amd64", sums)
    assert proc.returncode != 0 and "no single SHA-256 for runc.amd64" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "asset").exists()
