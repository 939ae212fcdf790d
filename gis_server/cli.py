"""The ``gis-server`` command line (click).

    gis-server db start|stop|status|url|migrate
    gis-server load synthetic --size small|demo|large --seed N [--replace]
    gis-server load osm PATH.osm.pbf [--cell-size 200] [--replace]
    gis-server users create NAME --role ROLE [--scope CODE] [--password]   (prints a token)
    gis-server users list | tokens create NAME | tokens list | tokens revoke ID
    gis-server audit tail [-n 20]
    gis-server incidents import FILE.csv | incidents escalate-overdue   (cron)
    gis-server docs permissions  # the permission matrix (docs/PERMISSIONS.md)
    gis-server assets            # vendor front-end assets (no CDN at run time)
    gis-server serve             # gunicorn, production mode
    gis-server demo              # everything `make demo` does after installing
"""
from __future__ import annotations

import os
import sys
import time

import click
from sqlalchemy import text

from . import pgcluster
from .models import ROLES


def _url() -> str:
    try:
        return pgcluster.database_url()
    except pgcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def main() -> None:
    """gis-server: grid management GIS server."""


# -- db ------------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """The database: the embedded PostGIS cluster (or DATABASE_URL)."""


@db.command("start")
def db_start() -> None:
    """Start the embedded cluster (idempotent) and create the database."""
    if os.environ.get("DATABASE_URL"):
        click.echo("DATABASE_URL is set: using that server, the embedded cluster is not needed.")
        return
    cluster = pgcluster.Cluster()
    t0 = time.monotonic()
    try:
        cluster.start()
    except pgcluster.ClusterError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"PostGIS running on 127.0.0.1:{cluster.port} (data in {cluster.datadir}, "
               f"{time.monotonic() - t0:.1f}s)")


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded cluster (idempotent)."""
    pgcluster.Cluster().stop()
    click.echo("stopped")


@db.command("status")
def db_status() -> None:
    """Exit 0 and say 'running' when the embedded cluster accepts connections."""
    cluster = pgcluster.Cluster()
    running = cluster.status()
    click.echo(f"{'running' if running else 'stopped'} (port {cluster.port}, "
               f"data {cluster.datadir})")
    sys.exit(0 if running else 3)


@db.command("url")
def db_url() -> None:
    """Print the SQLAlchemy URL (contains the generated password)."""
    click.echo(_url())


@db.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the schema (Alembic)."""
    from .db import migrate
    migrate(_url())
    click.echo("schema is at the newest revision")


# -- load ----------------------------------------------------------------------------------
@main.group()
def load() -> None:
    """Load a city (synthetic or from OpenStreetMap)."""


def _load_city(make_city, replace: bool) -> None:
    from .db import engine_for, is_empty, migrate
    from .loaders.bulk import clear_city, write_city

    url = _url()
    migrate(url)
    engine = engine_for(url)
    with engine.connect() as conn:
        if not is_empty(conn) and not replace:
            name = conn.execute(text("SELECT name FROM city")).scalar()
            raise click.ClickException(
                f"the database already holds a city ({name}); use --replace to replace it")
    t0 = time.monotonic()
    city = make_city()
    t1 = time.monotonic()
    with engine.begin() as conn:
        if replace:
            clear_city(conn)
        counts = write_city(conn, city, show_progress=sys.stderr.isatty())
    t2 = time.monotonic()
    click.echo(f"loaded {city.name}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items())
               + f" (generate {t1 - t0:.1f}s, write {t2 - t1:.1f}s)")


@load.command("synthetic")
@click.option("--size", type=click.Choice(["small", "demo", "large"]), default="demo",
              show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--replace", is_flag=True, help="Replace a city that is already loaded.")
def load_synthetic(size: str, seed: int, replace: bool) -> None:
    """A deterministic synthetic city around 116.30°E 39.98°N (county code 110108)."""
    from .loaders import synthetic
    _load_city(lambda: synthetic.generate(size=size, seed=seed), replace)


@load.command("osm")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--cell-size", type=float, default=200.0, show_default=True,
              help="Unit grid cell size in metres.")
@click.option("--county-code", default="990001", show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--replace", is_flag=True, help="Replace a city that is already loaded.")
def load_osm(path: str, cell_size: float, county_code: str, seed: int, replace: bool) -> None:
    """A real city from an OpenStreetMap .osm.pbf extract (read with pyrosm)."""
    from .loaders import osm
    _load_city(lambda: osm.load_pbf(path, cell_size_m=cell_size, county_code=county_code,
                                    seed=seed), replace)


# -- users / tokens / audit ----------------------------------------------------------------
def _app_config() -> dict:
    from .config import load as load_config
    return load_config()


def _system_principal():
    from .core.accounts import Principal
    return Principal(user_id=None, username=f"cli:{os.environ.get('USER', 'root')}",
                     role="admin")


@main.group()
def users() -> None:
    """Accounts (people and app keys) bound to a node of the grid hierarchy."""


@users.command("create")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--scope", "scope_code", default=None,
              help="Grid code of the subtree this account may see (omit: whole city).")
@click.option("--display-name", default=None)
@click.option("--password", is_flag=True, help="Also set a password (prompted) for the web login.")
@click.option("--expires-days", type=int, default=None, help="Token lifetime (default: none).")
def users_create(username, role, scope_code, display_name, password, expires_days) -> None:
    """Create an account and print its API token (shown once)."""
    from datetime import timedelta

    from .core import accounts, audit
    from .db import engine_for
    from .errors import APIError

    secret = click.prompt("Password", hide_input=True, confirmation_prompt=True) \
        if password else None
    try:
        with engine_for(_url()).begin() as conn:
            user = accounts.create_user(conn, username, role, scope_code, secret, display_name)
            token, row = accounts.issue_token(
                conn, user["id"], _app_config()["TOKEN_PEPPER"],
                timedelta(days=expires_days) if expires_days else None, label="cli")
            audit.record(conn, _system_principal(), "create_user", "user", user["id"],
                         endpoint="cli", detail={"role": role, "scope": scope_code})
    except APIError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"created {role} {username} (scope {scope_code or 'whole city'})")
    click.echo(f"token (shown once): {token}")


@users.command("list")
def users_list() -> None:
    from .core import accounts
    from .db import engine_for
    with engine_for(_url()).connect() as conn:
        for u in accounts.list_users(conn):
            click.echo(f"{u['id']:>4}  {u['username']:<20} {u['role']:<16} "
                       f"{u['scope_code'] or 'city':<15} tokens={u['active_tokens']}"
                       f"{'' if u['is_active'] else '  (disabled)'}")


@main.group()
def tokens() -> None:
    """API tokens."""


@tokens.command("create")
@click.argument("username")
@click.option("--expires-days", type=int, default=None)
@click.option("--label", default="cli")
def tokens_create(username, expires_days, label) -> None:
    """Issue another token for USERNAME (shown once)."""
    from datetime import timedelta

    from sqlalchemy import text as sql

    from .core import accounts, audit
    from .db import engine_for
    with engine_for(_url()).begin() as conn:
        uid = conn.execute(sql("SELECT id FROM users WHERE username = :u"),
                           {"u": username}).scalar()
        if uid is None:
            raise click.ClickException(f"no user {username!r}")
        token, row = accounts.issue_token(conn, uid, _app_config()["TOKEN_PEPPER"],
                                          timedelta(days=expires_days) if expires_days else None,
                                          label=label)
        audit.record(conn, _system_principal(), "issue_token", "token", row["id"],
                     endpoint="cli", detail={"user": username})
    click.echo(f"token {row['id']} for {username} (shown once): {token}")


@tokens.command("list")
@click.option("--user", "username", default=None)
def tokens_list(username) -> None:
    from .core import accounts
    from .db import engine_for
    with engine_for(_url()).connect() as conn:
        for t in accounts.list_tokens(conn):
            if username and t["username"] != username:
                continue
            state = "revoked" if t["revoked_at"] else "active"
            click.echo(f"{t['id']:>4}  {t['username']:<20} {t['prefix']}…  {state:<8} "
                       f"expires={t['expires_at'] or 'never'} last_used={t['last_used_at']}")


@tokens.command("revoke")
@click.argument("token_id", type=int)
def tokens_revoke(token_id) -> None:
    """Revoke a token by id (see `tokens list`)."""
    from .core import accounts, audit
    from .db import engine_for
    from .errors import APIError
    try:
        with engine_for(_url()).begin() as conn:
            row = accounts.revoke_token(conn, token_id)
            audit.record(conn, _system_principal(), "revoke_token", "token", token_id,
                         endpoint="cli")
    except APIError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"revoked token {row['id']} ({row['prefix']}…)")


@main.group()
def audit() -> None:
    """The append-only audit log."""


@audit.command("tail")
@click.option("-n", "limit", type=int, default=20, show_default=True)
@click.option("--user", "username", default=None)
@click.option("--action", default=None)
def audit_tail(limit, username, action) -> None:
    from .core import audit as audit_log
    from .db import engine_for
    with engine_for(_url()).connect() as conn:
        entries = audit_log.tail(conn, limit, username=username, action=action)
    for e in reversed(entries):
        click.echo(f"{e['at']:%Y-%m-%d %H:%M:%S%z}  {e['username'] or '-':<16} "
                   f"{e['role'] or '-':<15} {e['action']:<14} {e['object_type'] or ''}:"
                   f"{e['object_id'] or ''}  {e['remote_addr'] or ''} {e['endpoint'] or ''}")


@main.group()
def docs() -> None:
    """Documentation generated from the code."""


@docs.command("permissions")
def docs_permissions() -> None:
    """Print the permission matrix (docs/PERMISSIONS.md)."""
    from .access import permission_matrix
    click.echo(permission_matrix(), nl=False)


# -- incidents -----------------------------------------------------------------------------
@main.group()
def incidents() -> None:
    """Incidents (cases)."""


@incidents.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def incidents_import(path: str) -> None:
    """Import historical incidents from a CSV (all or nothing; see core/incidents_bulk.py)."""
    from .core import audit
    from .core.incidents_bulk import import_csv
    from .core.locate import GridIndex
    from .db import engine_for
    from .errors import APIError

    t0 = time.monotonic()
    try:
        with engine_for(_url()).begin() as conn:
            count = import_csv(conn, GridIndex.build(conn), path,
                               actor=_system_principal().username)
            audit.record(conn, _system_principal(), "import_incidents", "file", path,
                         endpoint="cli", detail={"count": count})
    except APIError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"imported {count:,} incidents in {time.monotonic() - t0:.1f}s")


@incidents.command("escalate-overdue")
def incidents_escalate_overdue() -> None:
    """Escalate overdue incidents (micro → small → big circulation); run it from cron."""
    from .core import audit
    from .core.incidents import escalate_overdue
    from .db import engine_for

    with engine_for(_url()).begin() as conn:
        done = escalate_overdue(conn, _system_principal().username)
        audit.record(conn, _system_principal(), "escalate_overdue", "incident", None,
                     endpoint="cli", detail={"count": len(done)})
    click.echo(f"escalated {len(done)} overdue incidents")


# -- assets / serve / demo ----------------------------------------------------------------
@main.command("assets")
def assets_cmd() -> None:
    """Copy front-end assets from node_modules into gis_server/static/vendor."""
    from .assets import vendor_assets
    copied = vendor_assets()
    click.echo(f"vendored {len(copied)} asset files")


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=2, show_default=True)
def serve(host: str, port: int, workers: int) -> None:
    """Serve the app with gunicorn (production mode)."""
    from .serving import gunicorn_argv
    url = _url()
    env = dict(os.environ, DATABASE_URL=url)
    argv = gunicorn_argv(f"{host}:{port}", workers)
    click.echo(f"serving on http://{host}:{port}/  (map: http://{host}:{port}/maps/grids)")
    os.execvpe(argv[0], argv, env)


@main.command("demo")
@click.option("--size", type=click.Choice(["small", "demo", "large"]), default="demo",
              show_default=True)
@click.option("--osm", "osm_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Load this .osm.pbf instead of the synthetic city (when empty).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.pass_context
def demo(ctx: click.Context, size: str, osm_path: str | None, host: str, port: int) -> None:
    """Start the database, migrate, load the demo city if empty, then serve."""
    from .db import engine_for, is_empty, migrate

    url = _url()
    migrate(url)
    with engine_for(url).connect() as conn:
        empty = is_empty(conn)
    if empty:
        if osm_path:
            ctx.invoke(load_osm, path=osm_path, cell_size=200.0, county_code="990001", seed=1,
                       replace=False)
        else:
            ctx.invoke(load_synthetic, size=size, seed=1, replace=False)
    else:
        with engine_for(url).connect() as conn:
            click.echo(f"city already loaded: {conn.execute(text('SELECT name FROM city')).scalar()}"
                       " (use `gis-server load ... --replace` to change it)")
    from .demo_accounts import ensure_demo_accounts
    click.echo(ensure_demo_accounts(url, _app_config()["TOKEN_PEPPER"]))
    ctx.invoke(serve, host=host, port=port, workers=2)


from .cli_grids import grids as _grids; main.add_command(_grids)  # noqa: E402,E702

if __name__ == "__main__":
    main()
