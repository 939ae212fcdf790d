"""The ``gis-server`` command line (click).

    gis-server db start|stop|status|url|migrate
    gis-server load synthetic --size small|demo|large --seed N [--replace]
    gis-server load osm PATH.osm.pbf [--cell-size 200] [--replace]
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
    url = _url()
    env = dict(os.environ, DATABASE_URL=url)
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind",
            f"{host}:{port}", "--access-logfile", "-", "gis_server.wsgi:app"]
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
    ctx.invoke(serve, host=host, port=port, workers=2)


if __name__ == "__main__":
    main()
