"""
A rendezvous in its own process for the benchmarks, so that its CPU time
is neither the harness's nor the executor's. Prints its registry URL on
one line, then serves until killed.

    BENCH_RENDEZVOUS_TOKEN=... python -m bench.rendezvous ENVIRONMENT_ID
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor

from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens


def main() -> None:
    rendezvous = Rendezvous(reactor, BearerTokens({sys.argv[1]: os.environ["BENCH_RENDEZVOUS_TOKEN"]}))
    port = reactor.listenTCP(0, site(rendezvous), interface="127.0.0.1")
    reactor.callWhenRunning(lambda: print(f"http://127.0.0.1:{port.getHost().port}", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
