"""Persistence: SQLAlchemy tables, the database runner, transitions' SQL, Alembic migrations."""
