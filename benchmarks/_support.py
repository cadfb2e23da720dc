"""Helpers the benchmarks share (tests/server.py uses them too: a benchmark
imports from tests/ only if it already runs a test server)."""

from __future__ import annotations

__all__ = ["drop_schema"]


def drop_schema(database_url: str, schema: str) -> None:
    """Leave the shared PostgreSQL database as it was: ``DROP SCHEMA ... CASCADE``."""
    import psycopg2  # installed with aiopg

    admin = psycopg2.connect(database_url, connect_timeout=5)
    try:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        admin.close()
