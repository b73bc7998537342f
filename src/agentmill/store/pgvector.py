"""pgvector for memory search, used when the PostgreSQL server has the extension.

Memories keep their embedding as JSON on every engine (migration 0009), so nothing depends on
the extension. Where it is available, :func:`enable` adds a ``vector`` column beside the JSON
one, kept in step by a trigger (as SQLite's FTS table is), and search ranks with pgvector's
cosine distance inside the database instead of loading every vector into the process.

It is not a migration because whether the extension exists is a property of the server, not of
the schema's history: a server that gains pgvector later gets the column at the next start
(every process runs :func:`agentmill.store.migrate.upgrade`, which calls this, under the
migration lock). The column has no fixed dimension, so any embedding model fits; search
compares only vectors of the query's length and model.
"""

from __future__ import annotations

import time

import structlog
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

log = structlog.get_logger("agentmill.store")

COLUMN = "embedding_vector"
MAX_DIMENSIONS = 16_000  # pgvector's limit for the ``vector`` type

# BEFORE INSERT/UPDATE so the JSON array and the vector never disagree, whoever writes the row.
# An embedding longer than pgvector accepts keeps a NULL vector (search by meaning then uses
# the in-process path, which reads the JSON: see ``memories.embedded``).
_SYNC_FUNCTION = f"""
CREATE OR REPLACE FUNCTION memories_embedding_vector() RETURNS trigger AS $$
BEGIN
  IF NEW.embedding IS NULL OR jsonb_typeof(NEW.embedding) <> 'array'
     OR jsonb_array_length(NEW.embedding) NOT BETWEEN 1 AND {MAX_DIMENSIONS} THEN
    NEW.{COLUMN} := NULL;
  ELSE
    NEW.{COLUMN} := CAST(CAST(NEW.embedding AS text) AS vector);
  END IF;
  RETURN NEW;
END
$$ LANGUAGE plpgsql
"""
_SYNC_TRIGGER = (
    "CREATE TRIGGER memories_embedding_vector BEFORE INSERT OR UPDATE OF embedding"
    " ON memories FOR EACH ROW EXECUTE FUNCTION memories_embedding_vector()"
)

_enabled: dict[str, tuple[bool, float]] = {}  # database url -> (has the column, checked at)
_RECHECK_SECONDS = 60.0


def enable(conn: Connection) -> bool:
    """Make memories searchable with pgvector if the server offers it; whether they are.

    Idempotent and cheap when done (two catalog reads). Never fails the caller: a role that
    may not create the extension gets a warning naming the statement a superuser can run.
    """
    if conn.dialect.name != "postgresql" or not _has_memories(conn):
        return False
    if not _extension_installed(conn):
        if not _extension_available(conn):
            log.info("pgvector not available: memory search compares embeddings in the process")
            return False
        try:
            with conn.begin_nested():
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except DBAPIError as exc:
            log.warning(
                "pgvector is installed on the server but this role cannot enable it; memory "
                "search compares embeddings in the process until a superuser runs "
                "CREATE EXTENSION vector in this database",
                error=str(exc.orig).splitlines()[0] if exc.orig else str(exc),
            )
            return False
    if not has_vector_column(conn, cached=False):
        conn.execute(text(f"ALTER TABLE memories ADD COLUMN {COLUMN} vector"))
        conn.execute(text(_SYNC_FUNCTION))
        conn.execute(text(_SYNC_TRIGGER))
        # Rows stored before: the trigger fills the column as it rewrites each embedding.
        conn.execute(text("UPDATE memories SET embedding = embedding WHERE embedding IS NOT NULL"))
        log.info("pgvector enabled: memory search ranks in the database")
    _enabled[_key(conn)] = (True, time.monotonic())
    return True


def has_vector_column(conn: Connection, *, cached: bool = True) -> bool:
    """Whether ``memories`` has the pgvector column (remembered for a minute per database, so a
    search costs no catalog read; a server that gains it is noticed without a restart)."""
    if conn.dialect.name != "postgresql":
        return False
    key = _key(conn)
    if cached and (hit := _enabled.get(key)) and time.monotonic() - hit[1] < _RECHECK_SECONDS:
        return hit[0]
    found = (
        conn.execute(
            text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = 'memories' AND column_name = :column"
            ),
            {"column": COLUMN},
        ).first()
        is not None
    )
    _enabled[key] = (found, time.monotonic())
    return found


def _key(conn: Connection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


def _has_memories(conn: Connection) -> bool:
    return conn.execute(text("SELECT to_regclass('memories')")).scalar() is not None


def _extension_installed(conn: Connection) -> bool:
    query = text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    return conn.execute(query).first() is not None


def _extension_available(conn: Connection) -> bool:
    query = text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    return conn.execute(query).first() is not None
