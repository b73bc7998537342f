"""Model providers, one module each; :class:`agentmill.gateway.Gateway` registers them."""
