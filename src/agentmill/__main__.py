"""``python -m agentmill`` is the ``agentmill`` command."""

from agentmill.cli import main

main()
