"""
execserver: a Twisted implementation of the codex exec-server.
"""

__version__ = "0.1.0"
