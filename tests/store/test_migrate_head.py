"""The start-up check reads the newest migration from the files without alembic; it must name
the same head alembic does, or a database would be thought current when it is not."""

from alembic.script import ScriptDirectory

from agentmill.store.migrate import alembic_config, script_head


def test_script_head_is_alembics_head() -> None:
    assert script_head() == ScriptDirectory.from_config(alembic_config()).get_current_head()
