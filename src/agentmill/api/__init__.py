"""The HTTP API: FastAPI under /api/v1 (and, later, the OpenAI-compatible /v1)."""
