"""
Run inside a sandbox under managed networking (argv: the host proxy's port,
the origin's port): print, as JSON, the proxy variables with their ports
named (C{<proxy>} for the host proxy's, C{<port-N>} for the others, by
first appearance), what a direct connection to each address gives, and
what requests through the proxy variables get from the origin.
"""

import errno
import http.client
import json
import os
import re
import socket
import sys
import urllib.request

proxy_port, origin_port = sys.argv[1], int(sys.argv[2])
bridges = {}


def named(match):
    port = match.group(1)
    if port == proxy_port:
        return ":<proxy>"
    return ":" + bridges.setdefault(port, f"<port-{len(bridges)}>")


variables = {key: re.sub(r":(\d{2,5})\b", named, value)
             for key, value in sorted(os.environ.items()) if "proxy" in key.lower()}


def attempt(what):
    try:
        what()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))


def connect(family, address):
    def run():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(address)
    return run


def bridge_port():
    return int(re.search(r":(\d+)", os.environ["HTTP_PROXY"].rsplit("@", 1)[-1]).group(1))


reach = {
    "bridge": attempt(connect(socket.AF_INET, ("127.0.0.1", bridge_port()))),
    "origin directly": attempt(connect(socket.AF_INET, ("127.0.0.1", origin_port))),
    "proxy directly": attempt(connect(socket.AF_INET, ("127.0.0.1", int(proxy_port)))),
    "ipv6 loopback": attempt(connect(socket.AF_INET6, ("::1", origin_port))),
    "unix socket": attempt(lambda: socket.socket(socket.AF_UNIX).close()),
}


def forwarded():
    with urllib.request.urlopen(f"http://origin.test:{origin_port}/echo/forwarded", timeout=10) as reply:
        return reply.status, json.loads(reply.read())["target"]


def tunnelled():
    host, port = re.search(r"(?:^|//)(?:[^@/]*@)?([^:/]+):(\d+)", os.environ["HTTPS_PROXY"]).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.set_tunnel("origin.test", origin_port)
    connection.request("GET", "/echo/tunnelled")
    reply = connection.getresponse()
    return reply.status, json.loads(reply.read())["target"]


through = {}
for name, request in (("forwarded", forwarded), ("tunnelled", tunnelled)):
    try:
        through[name] = request()
    except OSError as e:
        through[name] = str(e)
print(json.dumps({"variables": variables, "reach": reach, "through proxy": through}, sort_keys=True, indent=1))
