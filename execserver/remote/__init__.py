"""
Remote mode's endpoints: the environment registry's HTTP client
(L{registry}) and the harness's connector (L{harness}), which opens an
encrypted relay stream to an executor for the JSON-RPC client.
"""
