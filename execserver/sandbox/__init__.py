"""
Sandboxed execution: the sandbox context's schema (L{schema}), its
translation into a confinement plan (L{policy}), the seccomp filters
(L{seccomp}), the runner that applies them (L{runner}) and the
C{sandboxDenied} heuristic (L{denial}).
"""

from execserver.sandbox.schema import PathUri, SandboxContext, restricts

__all__ = ["PathUri", "SandboxContext", "restricts"]
