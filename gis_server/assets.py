"""Vendored front-end assets: copied at install time from ``node_modules`` (npm, pinned in
package.json / package-lock.json) into ``gis_server/static/vendor`` (git-ignored), and served
by Flask. No page loads JS, CSS or fonts from a CDN; folium's CDN URLs are overridden here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .pgcluster import PROJECT_ROOT

NODE_MODULES = PROJECT_ROOT / "node_modules"
VENDOR_DIR = Path(__file__).parent / "static" / "vendor"

# (npm package, path inside it) → copied to vendor/<package-name>/<same path>
FILES = [
    ("leaflet", "dist/leaflet.js"),
    ("leaflet", "dist/leaflet.css"),
    ("leaflet", "dist/images"),
    ("leaflet.markercluster", "dist/leaflet.markercluster.js"),
    ("leaflet.markercluster", "dist/MarkerCluster.css"),
    ("leaflet.markercluster", "dist/MarkerCluster.Default.css"),
    ("jquery", "dist/jquery.min.js"),
    ("bootstrap", "dist/js/bootstrap.bundle.min.js"),
    ("bootstrap", "dist/css/bootstrap.min.css"),
    ("@fortawesome/fontawesome-free", "css/all.min.css"),
    ("@fortawesome/fontawesome-free", "webfonts"),
    ("leaflet.awesome-markers", "dist/leaflet.awesome-markers.js"),
    ("leaflet.awesome-markers", "dist/leaflet.awesome-markers.css"),
    ("leaflet.awesome-markers", "dist/images"),
    ("leaflet.vectorgrid", "dist/Leaflet.VectorGrid.bundled.min.js"),
]


def vendor_path(package: str, path: str) -> str:
    """URL path (under /static) of a vendored file."""
    return f"/static/vendor/{package.replace('@', '').replace('/', '-')}/{path}"


def vendor_assets() -> list[Path]:
    if not NODE_MODULES.exists():
        raise RuntimeError("node_modules is missing: run `npm ci` (or `make setup`) first")
    copied = []
    for package, rel in FILES:
        src = NODE_MODULES / package / rel
        dst = VENDOR_DIR / package.replace("@", "").replace("/", "-") / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
            copied.extend(p for p in dst.rglob("*") if p.is_file())
        else:
            shutil.copy2(src, dst)
            copied.append(dst)
    return copied


# folium's default_js / default_css names → our vendored copies.
FOLIUM_JS = [
    ("leaflet", vendor_path("leaflet", "dist/leaflet.js")),
    ("jquery", vendor_path("jquery", "dist/jquery.min.js")),
    ("bootstrap", vendor_path("bootstrap", "dist/js/bootstrap.bundle.min.js")),
    ("awesome_markers", vendor_path("leaflet.awesome-markers",
                                    "dist/leaflet.awesome-markers.js")),
]
FOLIUM_CSS = [
    ("leaflet_css", vendor_path("leaflet", "dist/leaflet.css")),
    ("bootstrap_css", vendor_path("bootstrap", "dist/css/bootstrap.min.css")),
    ("awesome_markers_font_css", vendor_path("fortawesome-fontawesome-free", "css/all.min.css")),
    ("awesome_markers_css", vendor_path("leaflet.awesome-markers",
                                        "dist/leaflet.awesome-markers.css")),
]
MARKERCLUSTER_JS = vendor_path("leaflet.markercluster", "dist/leaflet.markercluster.js")
VECTORGRID_JS = vendor_path("leaflet.vectorgrid", "dist/Leaflet.VectorGrid.bundled.min.js")
MARKERCLUSTER_CSS = [vendor_path("leaflet.markercluster", "dist/MarkerCluster.css"),
                     vendor_path("leaflet.markercluster", "dist/MarkerCluster.Default.css")]
