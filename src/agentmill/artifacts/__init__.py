"""Files steps and tools write, kept per run, listed and downloaded over the API, and passed
to later steps by reference (``{{ steps.<id>.artifacts }}``)."""

from agentmill.artifacts.names import check_name, media_type_for
from agentmill.artifacts.store import ArtifactRecord, ArtifactStore, artifact_ref, artifacts_root

__all__ = [
    "ArtifactRecord",
    "ArtifactStore",
    "artifact_ref",
    "artifacts_root",
    "check_name",
    "media_type_for",
]
