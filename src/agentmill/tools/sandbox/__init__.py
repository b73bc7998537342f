"""The ``python`` tool: model-written code in a bubblewrap sandbox (DESIGN.md decision 11)."""

from agentmill.tools.sandbox._command import SandboxLimits
from agentmill.tools.sandbox.tool import PythonTool, SandboxState, SandboxStatus

__all__ = ["PythonTool", "SandboxLimits", "SandboxState", "SandboxStatus"]
