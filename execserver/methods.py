"""
The method table: every JSON-RPC method the server core answers, shared by
all services (the local listener, stdio and remote relay streams).
"""

from __future__ import annotations

from execserver import (capabilities, discovery, envconfig, environment, filesystem, http,
                        process_methods, watch)
from execserver.server import Method


def all_methods() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for module in (process_methods, http, environment, envconfig, filesystem, watch, capabilities,
                   discovery):
        methods.update(module.METHODS)
    return methods
