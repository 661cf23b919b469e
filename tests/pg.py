"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on a temp dir and a free port.

PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user (Debian's packages create it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def pg_bindir() -> Path:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(cand) / "initdb").exists():
            return Path(cand)
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql")


@dataclass
class Postgres:
    datadir: Path
    port: int
    run_as: list[str]
    bindir: Path

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def createdb(self, name: str) -> str:
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, tool: str, *args: str) -> None:
        exe = self.bindir / tool
        exe_s = str(exe) if exe.exists() else tool
        subprocess.run([*self.run_as, exe_s, *args], check=True, capture_output=True, cwd="/")

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop"],
                       capture_output=True, cwd="/")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_postgres(port: int) -> Postgres:
    bindir = pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="primer-pg-"))
    datadir = root / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        datadir.mkdir()
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, cwd="/")
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts, "-w", "-t", "60",
                    "-l", str(datadir / "server.log"), "start"], check=True, capture_output=True, cwd="/")
    return Postgres(datadir=datadir, port=port, run_as=run_as, bindir=bindir)
