"""Tools agents can call (see ``tools.base`` for the protocol)."""
