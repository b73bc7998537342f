"""Local servers that speak each provider's wire protocol, for tests and benchmarks."""
