"""WSGI entry point for gunicorn: ``gunicorn gis_server.wsgi:app``."""
from . import create_app

app = create_app()
