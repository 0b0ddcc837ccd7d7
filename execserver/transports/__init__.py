"""
Transports that carry JSON-RPC messages: WebSocket and stdio.
"""
