#!/usr/bin/env bash
# Install the Debian packages gis-server needs, only those that are missing.
# As root: apt-get installs them. Otherwise: print the exact command and fail.
set -euo pipefail

need=()
pg_version=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1 || true)
pg_version=${pg_version:-15}
[ -x "/usr/lib/postgresql/$pg_version/bin/pg_ctl" ] || need+=("postgresql-$pg_version")
[ -f "/usr/share/postgresql/$pg_version/extension/postgis.control" ] \
    || need+=("postgresql-$pg_version-postgis-3")
[ -x /usr/bin/chromium ] || need+=(chromium)          # headless-browser tests of the maps
command -v ogrinfo >/dev/null || need+=(gdal-bin)      # a real OGC API client for tests
command -v npm >/dev/null || need+=(npm)               # vendors the front-end assets
command -v wrk >/dev/null || need+=(wrk)               # HTTP load for scripts/bench
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]}" >&2
    echo "install them with: sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
