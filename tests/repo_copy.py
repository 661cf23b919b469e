"""A temporary copy of this checkout, as a fresh git repository (for end-to-end runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from contract.names import PIN_PATH
from contract.pin import write_pin


def copy_repo(src: Path, dest: Path) -> Path:
    """Copy the files of ``src`` (tracked + untracked, not ignored) into a new repo at ``dest``,
    with nothing pinned, like a fresh clone: the user's own `primer up` may have pinned ``src``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        path = src / rel
        if path.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
    write_pin(dest / PIN_PATH, None)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "initial"], cwd=dest, check=True)
    return dest
