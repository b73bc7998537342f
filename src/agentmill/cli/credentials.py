"""The first start's owner credentials, kept in a file only the owner can read.

They are shown once in the terminal; a start that fails after creating them (or a scrolled-away
terminal) would lose them, so they are written to ``<home>/first-start-credentials.txt`` too.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentmill.api.bootstrap import FirstOwner

CREDENTIALS_FILE = "first-start-credentials.txt"


def save_credentials(home: Path, first: FirstOwner, url: str) -> Path:
    """Write ``first`` to ``<home>/first-start-credentials.txt`` with mode 0600."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / CREDENTIALS_FILE
    text = (
        "AgentMill first start: the owner account, workspace and API key created then.\n"
        "Keep them somewhere safe, then delete this file.\n"
        f"url:       {url}\n"
        f"email:     {first.email}\n"
        f"password:  {first.password}\n"
        f"workspace: {first.workspace_id}\n"
        f"API key:   {first.api_key}\n"
    )
    # Created 0600 (never readable by others, even for a moment); an old file is narrowed too.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path
