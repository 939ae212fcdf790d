"""The project's own embedded PostGIS cluster.

One PostgreSQL cluster per checkout, living in ``data/pg`` (git-ignored) and listening on
127.0.0.1 on its own port (default 54329) so it never clashes with a system cluster on 5432.

PostgreSQL refuses to run as root, so when we are root every server command runs as the
``postgres`` system user (``runuser -u postgres``) and the data directory belongs to it.
Authentication is scram-sha-256 with a password generated on first start and kept in
``data/pg.secret`` (git-ignored); nothing secret lives in the repository.

Everything here is idempotent: ``start`` on a running cluster is a no-op, ``stop`` on a stopped
one too. Set ``DATABASE_URL`` to use an existing PostGIS instead; then this module is not used.
"""
from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 54329
DEFAULT_DBNAME = "gis"
SUPERUSER = "gis"


class ClusterError(RuntimeError):
    """A problem with the embedded cluster, phrased so a user knows what to do."""


def data_root() -> Path:
    """Where the cluster, secrets and uploads live: ``data/`` or ``GIS_DATA_DIR``."""
    return Path(os.environ.get("GIS_DATA_DIR", PROJECT_ROOT / "data"))


def _default_port() -> int:
    return int(os.environ.get("GIS_PG_PORT", DEFAULT_PORT))


@dataclass(frozen=True)
class Cluster:
    data_root: Path = field(default_factory=data_root)
    port: int = field(default_factory=_default_port)

    @property
    def datadir(self) -> Path:
        return self.data_root / "pg"

    @property
    def rundir(self) -> Path:
        # Unix socket + log; outside datadir so initdb gets an empty directory.
        return self.data_root / "run"

    @property
    def logfile(self) -> Path:
        return self.rundir / "postgres.log"

    @property
    def secret_file(self) -> Path:
        return self.data_root / "pg.secret"

    # -- binaries -------------------------------------------------------------------------
    def bindir(self) -> Path:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
        if not candidates:
            found = shutil.which("pg_ctl")
            if found:
                return Path(found).parent
            raise ClusterError(
                "PostgreSQL server binaries not found. Install them with: "
                "sudo apt-get install postgresql-15 postgresql-15-postgis-3 "
                "(or run `make demo` as root, which installs them)."
            )
        return Path(candidates[0]).parent

    def check_postgis_installed(self) -> None:
        version = self.bindir().parent.name  # /usr/lib/postgresql/15/bin -> 15
        controls = glob.glob(f"/usr/share/postgresql/{version}/extension/postgis.control")
        if not controls:
            raise ClusterError(
                f"PostGIS is not installed for PostgreSQL {version}. Install it with: "
                f"sudo apt-get install postgresql-{version}-postgis-3"
            )

    # -- running as the right user ----------------------------------------------------------
    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self._as_owner(argv), capture_output=True, text=True, check=check)

    # -- lifecycle ------------------------------------------------------------------------
    def password(self) -> str:
        if not self.secret_file.exists():
            self.data_root.mkdir(parents=True, exist_ok=True)
            self.secret_file.write_text(secrets.token_urlsafe(24))
            self.secret_file.chmod(0o600)
        return self.secret_file.read_text().strip()

    def is_initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.is_initialised():
            return
        self.check_postgis_installed()
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x",
                                        str(self.data_root)], capture_output=True)
            if reachable.returncode != 0:
                raise ClusterError(
                    f"the postgres system user cannot reach {self.data_root} (a parent "
                    f"directory is not searchable by others): `chmod o+x` the parents or set "
                    f"GIS_DATA_DIR to a directory it can reach")
        pwfile = self.rundir / "initdb.pw"
        pwfile.write_text(self.password() + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres", "postgres")
            shutil.chown(self.rundir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self.datadir.chmod(0o700)
        try:
            self._run([
                str(self.bindir() / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                "--encoding=UTF8", "--locale=C.UTF-8", "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
            ])
        except subprocess.CalledProcessError as exc:
            raise ClusterError(f"initdb failed: {exc.stderr.strip()}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
        # Tuned for one analytic + ingest workload on a small machine; see docs/ARCHITECTURE.md.
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.rundir}'\n"
                "max_connections = 200\n"
                "shared_buffers = '1GB'\n"
                "work_mem = '64MB'\n"
                "maintenance_work_mem = '512MB'\n"
                "max_wal_size = '4GB'\n"
                "checkpoint_timeout = '15min'\n"
                "jit = off\n"
            )

    def _postmaster_pid(self) -> int | None:
        """The pid of *our* server (from postmaster.pid) if that process is alive."""
        pidfile = self.datadir / "postmaster.pid"
        try:
            pid = pidfile.read_text().split("\n", 1)[0].strip()
        except (FileNotFoundError, PermissionError):
            return None
        return int(pid) if pid.isdigit() and Path(f"/proc/{pid}").exists() else None

    def status(self) -> bool:
        """True when *this* cluster runs and accepts connections on its port.

        Checking the pid file as well as the port means another server that happens to
        listen on our port is not mistaken for ours.
        """
        if not self.is_initialised() or self._postmaster_pid() is None:
            return False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        res = subprocess.run(
            [str(self.bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True, text=True,
        )
        return res.returncode == 0

    def start(self, timeout: float = 60) -> None:
        self.init()
        if self.status():
            return
        self.rundir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.rundir, "postgres", "postgres")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            raise ClusterError(
                f"port {self.port} is taken by another server; set GIS_PG_PORT to a free "
                f"port (or DATABASE_URL to use that server)")
        # A stale pid file from a killed server would make pg_ctl refuse to start.
        pidfile = self.datadir / "postmaster.pid"
        if self._postmaster_pid() is None:
            self._run(["rm", "-f", str(pidfile)], check=False)
        res = self._run([
            str(self.bindir() / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
            "-w", "-t", str(int(timeout)), "start",
        ], check=False)
        if res.returncode != 0 and not self.status():
            tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise ClusterError(f"could not start PostgreSQL: {res.stderr.strip()}\n{tail}")
        deadline = time.time() + timeout
        while not self.status():
            if time.time() > deadline:
                raise ClusterError("PostgreSQL did not accept connections in time")
            time.sleep(0.2)
        self.ensure_database(DEFAULT_DBNAME)

    def stop(self) -> None:
        if not self.is_initialised() or not (self.datadir / "postmaster.pid").exists():
            return
        self._run([str(self.bindir() / "pg_ctl"), "-D", str(self.datadir), "-m", "fast",
                   "-w", "stop"], check=False)

    # -- databases ------------------------------------------------------------------------
    def url(self, dbname: str = DEFAULT_DBNAME) -> str:
        return (f"postgresql+psycopg://{SUPERUSER}:{self.password()}@127.0.0.1:"
                f"{self.port}/{dbname}")

    def ensure_database(self, dbname: str) -> None:
        create_database(self.url("postgres"), dbname)


def _server_url(url: str, dbname: str) -> str:
    from sqlalchemy.engine import make_url
    return make_url(url).set(database=dbname).render_as_string(hide_password=False)


def create_database(server_url: str, dbname: str, drop_first: bool = False) -> str:
    """Create ``dbname`` (with PostGIS) on the server of ``server_url``; return its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(server_url)
    admin = psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                            dbname="postgres", autocommit=True)
    with admin:
        if drop_first:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               (dbname,)).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{dbname}"')
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                         dbname=dbname, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    return _server_url(server_url, dbname)


def drop_database(server_url: str, dbname: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(server_url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password,
                         dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def database_url() -> str:
    """``DATABASE_URL`` if set, else the embedded cluster (started on demand)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url
    cluster = Cluster()
    cluster.start()
    return cluster.url()
