"""AgentMill."""
