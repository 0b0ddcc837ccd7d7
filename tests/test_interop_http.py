"""
C{http/request} against the reference and ours, through L{tests.interop}.

Each server gets an origin and a forward proxy of its own (both run the
same code on their own ports), so a scenario can record exactly what
reached them. Transcripts then name those ports C{<origin>} and
C{<proxy>}; response bodies are recorded decoded (the origin's echo as
JSON), large ones as a length and whether they were intact.
"""

from __future__ import annotations

import base64
import difflib
import json
from typing import Awaitable, Callable

from twisted.internet.defer import ensureDeferred, gatherResults

from tests.httpserver import ForwardProxy, Origin, pattern
from tests.interop import InteropTestCase, Peer, _render, run_against

#: Bodies longer than this are recorded by length and integrity only.
RECORDED_BODY_LIMIT = 4096

#: Server variables for the valueEnvVar checks; every denied one is set.
ENV_FOR_HEADERS = {
    "TESTVAR": "secret-val",
    "EMPTYVAR": "",
    "lowervar": "lowval",
    "SPACEVAR": " sp ace ",
    "NLVAR": "a\nb",
    "UTFVAR": "caf\u00e9",
    "OPENAI_API_KEY": "denied",
    "AWS_SESSION_TOKEN": "denied",
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decoded_body(data: bytes):
    if len(data) > RECORDED_BODY_LIMIT:
        return {"length": len(data), "pattern": data == pattern(len(data))}
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("latin-1")


def view(reply: dict) -> dict:
    """
    A reply with its body decoded.
    """
    if "result" not in reply or not isinstance(reply["result"], dict) or "bodyBase64" not in reply["result"]:
        return reply
    result = dict(reply["result"])
    result["body"] = decoded_body(base64.b64decode(result.pop("bodyBase64")))
    return {"id": reply["id"], "result": result}


class HttpPeer:
    """
    An interop L{Peer} with this run's origin and proxy.
    """

    def __init__(self, peer: Peer, origin: Origin, proxy: ForwardProxy) -> None:
        self.peer = peer
        self.origin = origin
        self.proxy = proxy

    def url(self, path: str = "/echo", host: str = "127.0.0.1") -> str:
        return self.origin.url(path, host)

    def params(self, path: str = "/echo", **extra) -> dict:
        params = {"method": "GET", "url": self.url(path), "requestId": "r"}
        params.update(extra)
        return params

    async def http(self, label: str, params, peer: Peer | None = None) -> dict:
        reply = await (peer or self.peer).call("http/request", params, record=False)
        self.peer.record(label, view(reply))
        return reply

    async def get(self, label: str, path: str = "/echo", **extra) -> dict:
        return await self.http(label, self.params(path, **extra))

    def record_seen(self, label: str, since: int) -> None:
        self.peer.record(label, [seen.view() for seen in self.origin.seen[since:]])

    def record_proxy(self, label: str, since: int) -> None:
        self.peer.record(label, [[seen.line] + seen.lines for seen in self.proxy.seen[since:]])

    async def deltas(self, request_id: str, peer: Peer | None = None) -> list[dict]:
        frames = []
        queue = (peer or self.peer).queue
        while True:
            message = await queue.notification(
                lambda m: m["method"] == "http/request/bodyDelta" and m["params"]["requestId"] == request_id)
            frames.append(message["params"])
            if message["params"]["done"]:
                return frames

    async def stream(self, label: str, params: dict, exact: bool = True) -> None:
        """
        Record a streamed response and its frames: every frame, or (when
        reads may split differently) the body and the shape of the frames.
        """
        reply = await self.http(label, params)
        if "result" not in reply:
            return
        frames = await self.deltas(params["requestId"])
        if exact:
            self.record_frames(label + " frames", frames)
            return
        data = b"".join(base64.b64decode(frame["deltaBase64"]) for frame in frames)
        last = dict(frames[-1])
        del last["seq"]
        self.peer.record(label + " frames", {
            "body": decoded_body(data),
            "seqs contiguous": [frame["seq"] for frame in frames] == list(range(1, len(frames) + 1)),
            "last": last,
            "only the last is done": [frame["done"] for frame in frames[:-1]] == [False] * (len(frames) - 1),
        })

    def record_frames(self, label: str, frames: list[dict]) -> None:
        """
        Every frame, its key order and its decoded delta.
        """
        self.peer.record(label, [
            [list(frame), {**frame, "deltaBase64": decoded_body(base64.b64decode(frame["deltaBase64"]))}]
            for frame in frames])


HttpScenario = Callable[[HttpPeer], Awaitable[None]]


def _normalized(transcript: list, origin: Origin, proxy: ForwardProxy) -> list:
    text = json.dumps(transcript)
    text = text.replace(f":{origin.port_number}", ":<origin>").replace(f":{proxy.port_number}", ":<proxy>")
    return [tuple(entry) for entry in json.loads(text)]


async def _run(kind: str, scenario: HttpScenario, env: dict[str, str] | None) -> list:
    origin = await Origin().start()
    proxy = await ForwardProxy().start()
    try:
        server_env = {name: value.format(proxy=proxy.url, proxy_address=proxy.url[len("http://"):])
                      for name, value in (env or {}).items()}

        async def scenario_with_fixtures(peer: Peer) -> None:
            await scenario(HttpPeer(peer, origin, proxy))

        transcript = await run_against(kind, scenario_with_fixtures, env=server_env)
    finally:
        await origin.stop()
        await proxy.stop()
    return _normalized(transcript, origin, proxy)


class HttpInteropTestCase(InteropTestCase):
    async def compare_http(self, scenario: HttpScenario, env: dict[str, str] | None) -> list:
        reference, ours = await gatherResults([
            ensureDeferred(_run("reference", scenario, env)),
            ensureDeferred(_run("ours", scenario, env)),
        ], consumeErrors=True)
        if reference != ours:
            diff = "\n".join(difflib.unified_diff(
                _render(reference), _render(ours), "reference", "ours", lineterm=""))
            self.fail("transcripts differ:\n" + diff)
        return ours


def http_interop(scenario: HttpScenario, env: dict[str, str] | None = None):
    """
    A test running C{scenario} against both servers, each with its own
    origin and proxy. In C{env} values, C{{proxy}} is this run's proxy URL
    and C{{proxy_address}} its C{host:port}.
    """

    def test(self):
        return ensureDeferred(self.compare_http(scenario, env))

    test.__doc__ = scenario.__doc__
    return test


# Scenarios


async def check_order(peer: HttpPeer) -> None:
    """
    Params are decoded before the handshake gate, then the gate, then the
    method, URL and headers in turn.
    """
    await peer.http("empty before initialize", {})
    await peer.get("bad body before initialize", bodyBase64="!!")
    await peer.get("valid before initialize", method="G T")
    await peer.peer.call("initialize", {"clientName": "interop"}, record=False)
    await peer.get("before initialized")
    peer.peer.send({"method": "initialized"})
    cases = [
        ("bad body wins", {"method": "G T", "bodyBase64": "!!"}),
        ("method before url", {"method": "G T", "url": "ftp://x"}),
        ("scheme before headers", {"url": "ftp://x", "headers": [{"name": "a b", "value": "v"}]}),
        ("name before env", {"headers": [{"name": "a b", "value": "p", "valueEnvVar": "OPENAI_API_KEY"}]}),
        ("env before value", {"headers": [{"name": "x", "value": "a\nb", "valueEnvVar": "OPENAI_API_KEY"}]}),
        ("headers in order", {"headers": [{"name": "x", "value": "a\nb"}, {"name": "a b", "value": "v"}]}),
        ("validation before zero timeout", {"url": "ftp://x", "timeoutMs": 0}),
        ("zero timeout", {"timeoutMs": 0}),
    ]
    for label, extra in cases:
        await peer.get(label, **extra)


async def params_and_values(peer: HttpPeer) -> None:
    """
    serde's messages for malformed params, the base64 body, methods, URLs,
    schemes, header names, values and valueEnvVar.
    """
    await peer.peer.handshake()
    url = peer.url()
    shapes = [None, [], "x", {"method": "GET"}, {"method": "GET", "url": url}, ["GET", url],
              ["GET", url, [], None, None, "follow", "r", False, 1],
              ["GET", url, [["x-a", "v"]], None, None, "follow", "r", False]]
    for index, params in enumerate(shapes):
        await peer.http(f"shape {index}", params)
    fields = [
        {"method": 1}, {"url": None}, {"requestId": 5}, {"headers": None}, {"headers": {"a": "b"}},
        {"headers": [{"name": "x", "valueEnvVar": "TESTVAR"}]}, {"headers": [{"value": "v"}]},
        {"headers": [["x"]]}, {"headers": ["x"]}, {"headers": [{"name": "x", "value": 1}]},
        {"bodyBase64": 1}, {"timeoutMs": "1"}, {"timeoutMs": -1}, {"timeoutMs": 1.5},
        {"timeoutMs": 18446744073709551616}, {"streamResponse": "true"}, {"streamResponse": None},
        {"redirectPolicy": "bogus"}, {"redirectPolicy": "manual"}, {"redirectPolicy": None},
        {"redirectPolicy": 1}, {"bodyBase64": None, "extra": 1, "requestId": "",
                                "headers": [{"name": "x", "value": "v", "valueEnvVar": None, "z": 1}]},
        {"timeoutMs": 18446744073709551615},
    ]
    for index, extra in enumerate(fields):
        await peer.get(f"field {index}", **extra)
    for body in ["!!!", "aGk", "-_-_", "aG k=", "aGVs\nbG8="]:
        await peer.get(f"body {body!r}", bodyBase64=body)
    for method in ["GE T", "", "GET\n", "G(ET", "caf\u00e9", "get", "FOO", "A" * 20]:
        await peer.get(f"method {method!r}", method=method)
    for url in ["/echo", "ht!tp://x/", "", "x", "http:", "http://127.0.0.1:99999/", "http://[::1",
                "ftp://x", "file:///etc/passwd", "ws://x", "wss://x", "mailto:a@b", "data:text/plain,hi",
                "foo://a b", "http://a b/", "http://1.2.3.256/", "http://u@/", "http://[1:2]/",
                "http://xn--a.com/", "http://\u200d.com/", "http://08/", "http://a.com:1a/"]:
        await peer.http(f"url {url!r}", {"method": "GET", "url": url, "requestId": "r"})
    for name in ["a b", "", "a:b", "caf\u00e9"]:
        await peer.get(f"name {name!r}", headers=[{"name": name, "value": "v"}])
    for value in ["a\nb", "a\rb", "a\0b", "a\x7fb"]:
        await peer.get(f"value {value!r}", headers=[{"name": "X-Up", "value": value}])
    for variable in ["TESTVAR", "SPACEVAR", "lowervar", "UTFVAR", "testvar", "NOPE_UNSET", "EMPTYVAR", "",
                     "NLVAR", "A=B", "OPENAI_API_KEY", "openai_api_key", "Aws_Session_Token",
                     "codex_exec_server_noise_auth_token", "OPENAI_API_KEY_X"]:
        await peer.get(f"env {variable!r}", headers=[{"name": "x-a", "value": " pre ", "valueEnvVar": variable}])


async def request_on_the_wire(peer: HttpPeer) -> None:
    """
    What reaches the origin: lower-case grouped headers, the defaults, the
    body framing, URL credentials, the encoded path and query.
    """
    await peer.peer.handshake()
    cases = [
        ("plain", {}),
        ("grouped", {"headers": [{"name": n, "value": v} for n, v in [
            ("X-Zeta", "1"), ("x-alpha", "2"), ("X-Zeta", "3"), ("Accept", "text/plain"), ("USER-AGENT", "ua/1")]]}),
        ("values", {"headers": [{"name": f"x-{i}", "value": v} for i, v in enumerate(
            ["  v  ", "\tv\t", "", "caf\u00e9", "\U0001F600"])]}),
        ("user host", {"headers": [{"name": "Host", "value": "a"}, {"name": "host", "value": "b"}]}),
        ("post", {"method": "POST", "bodyBase64": b64(b"hello"),
                  "headers": [{"name": "content-type", "value": "text/plain"}]}),
        ("post empty", {"method": "POST", "bodyBase64": ""}),
        ("get with body", {"bodyBase64": b64(b"payload")}),
        ("short content-length", {"method": "POST", "bodyBase64": b64(b"hello"),
                                  "headers": [{"name": "content-length", "value": "3"}]}),
        ("bad content-length", {"method": "POST", "bodyBase64": b64(b"hello"), "headers": [
            {"name": "x-a", "value": "1"}, {"name": "content-length", "value": "abc"}]}),
        ("differing content-lengths", {"method": "POST", "bodyBase64": b64(b"hello"), "headers": [
            {"name": "content-length", "value": "5"}, {"name": "content-length", "value": "4"}]}),
        ("chunked", {"method": "POST", "bodyBase64": b64(b"hello"),
                     "headers": [{"name": "transfer-encoding", "value": "chunked"}]}),
        ("chunked without body", {"method": "POST", "headers": [
            {"name": "transfer-encoding", "value": "chunked"}, {"name": "x-a", "value": "1"}]}),
        ("zero content-length without body", {"headers": [{"name": "content-length", "value": "0"}]}),
        ("connection close", {"headers": [{"name": "connection", "value": "close"}]}),
        ("connect method", {"method": "CONNECT"}),
        ("credentials", {"url": peer.url().replace("://", "://us%20er:p%40ss@"),
                         "headers": [{"name": "x-a", "value": "1"}]}),
        ("credentials and authorization", {"url": peer.url().replace("://", "://u:p@"), "headers": [
            {"name": "x-a", "value": "1"}, {"name": "Authorization", "value": "X"}]}),
        ("fragment and query", {"url": peer.url("/echo?a=1&b=%20x#frag")}),
        ("query encoding", {"url": peer.url('/echo?q=a b&c=\u00e9|"<>\'`{}^\\')}),
        ("path encoding", {"url": peer.url("/a/../echo/./caf\u00e9/%2F..//x/p'\"<>`{}^|\\y")}),
        ("localhost", {"url": peer.url(host="LOCALHOST")}),
        ("numeric host", {"url": peer.url(host="0x7f.1")}),
        ("big body", {"method": "POST", "bodyBase64": b64(pattern(3 * 1024 * 1024))}),
    ]
    for label, extra in cases:
        start = len(peer.origin.seen)
        await peer.http(label, peer.params(**extra))
        if label == "big body":
            seen = peer.origin.seen[-1]
            peer.peer.record(label + " seen", [seen.headers, len(seen.body), seen.body == pattern(len(seen.body))])
        else:
            peer.record_seen(label + " seen", start)
    await peer.http("unresolvable idna", {"method": "GET", "url": "http://b\u00fccher.invalid:1/x#frag",
                                          "requestId": "r"})


async def responses(peer: HttpPeer) -> None:
    """
    Statuses, headers (grouped, non-ASCII dropped, hop-by-hop kept), bodies
    without decoding, and the errors of broken responses.
    """
    await peer.peer.handshake()
    for path in ["/headers", "/status/404", "/status/500", "/status/599", "/status/300", "/status/204",
                 "/status/304", "/gzip", "/until-close", "/trailers", "/continue", "/status/101",
                 "/bytes?n=5000000", "/garbage#frag", "/drop", "/truncated", "/truncated-chunked"]:
        await peer.get(path, path)
    await peer.get("head", "/status/200", method="HEAD")
    await peer.get("gzip accepted", "/gzip", headers=[{"name": "accept-encoding", "value": "gzip"}])
    await peer.http("refused", {"method": "GET", "url": "HTTP://u:p@127.0.0.1:1/a b#f g", "requestId": "r"})
    await peer.http("default port dropped", {"method": "GET", "url": "http://127.0.0.1:80/echo",
                                             "requestId": "r"})
    await peer.http("ipv6", {"method": "GET", "url": f"http://[::1]:{peer.origin.port_number}/echo",
                             "requestId": "r"})


async def redirects(peer: HttpPeer) -> None:
    """
    Following (10 at most), stopping, method and body changes, referer,
    credentials across origins, odd targets.
    """
    await peer.peer.handshake()
    headers = [{"name": "x-custom", "value": "1"}, {"name": "authorization", "value": "Bearer t"},
               {"name": "content-type", "value": "text/plain"}, {"name": "cookie", "value": "c=1"}]
    other = peer.url("/echo/x?q=1", host="localhost")
    cases = [
        ("chain 10", "/chain/10", {}),
        ("chain 11", "/chain/11", {}),
        ("loop", "/loop", {}),
        ("stop", "/redirect/302?to=/echo/after", {"redirectPolicy": "stop"}),
        ("follow", "/redirect/302?to=/echo/after", {"redirectPolicy": "follow"}),
        ("post 301", "/redirect/301?to=/echo/after", {"method": "POST", "bodyBase64": b64(b"postbody"),
                                                      "headers": headers}),
        ("post 302", "/redirect/302?to=/echo/after", {"method": "POST", "bodyBase64": b64(b"postbody"),
                                                      "headers": headers}),
        ("post 303", "/redirect/303?to=/echo/after", {"method": "POST", "bodyBase64": b64(b"postbody"),
                                                      "headers": headers}),
        ("post 307", "/redirect/307?to=/echo/after", {"method": "POST", "bodyBase64": b64(b"postbody"),
                                                      "headers": headers}),
        ("post 308", "/redirect/308?to=/echo/after", {"method": "POST", "bodyBase64": b64(b"postbody"),
                                                      "headers": headers}),
        ("put 303", "/redirect/303?to=/echo/after", {"method": "PUT", "bodyBase64": b64(b"postbody")}),
        ("head 303", "/redirect/303?to=/echo/after", {"method": "HEAD"}),
        ("delete 302", "/redirect/302?to=/echo/after", {"method": "DELETE", "bodyBase64": b64(b"postbody")}),
        ("payload headers", "/redirect/303?to=/echo/a", {"method": "PUT", "bodyBase64": b64(b"hello"), "headers": [
            {"name": n, "value": v} for n, v in [("content-type", "t"), ("x-a", "1"), ("content-encoding", "e"),
                                                 ("x-b", "2"), ("content-length", "5"), ("x-c", "3")]]}),
        ("cross origin", "/redirect/302?to=" + other, {"headers": [
            {"name": n, "value": v} for n, v in [("a", "1"), ("authorization", "t"), ("b", "2"), ("cookie", "c"),
                                                 ("proxy-authorization", "p"), ("www-authenticate", "w"),
                                                 ("c", "3")]]}),
        ("cross origin post", "/redirect/302?to=" + other, {"method": "POST", "bodyBase64": b64(b"hi"), "headers": [
            {"name": n, "value": v} for n, v in [("content-type", "t"), ("authorization", "a"), ("x", "1"),
                                                 ("cookie", "c"), ("y", "2")]]}),
        ("other port", "/redirect/302?to=http://127.0.0.1:1/", {"headers": headers}),
        ("user referer", "/redirect/302?to=/echo/a", {"headers": [
            {"name": "referer", "value": "mine"}, {"name": "x-b", "value": "1"}]}),
        ("relative", "/redirect/302?to=../echo/z", {}),
        ("relative query", "/echo/r/redirect/302?to=x?y", {}),
        ("network path", f"/redirect/302?to=//localhost:{peer.origin.port_number}/echo/n", {}),
        ("fragment", "/redirect/302?to=/echo/f%23frag", {}),
        ("ftp", "/redirect/302?to=ftp://127.0.0.1/x", {}),
        ("unparsable", "/redirect/302?to=http://[bad", {}),
        ("no location", "/status/301", {}),
    ]
    for label, path, extra in cases:
        start = len(peer.origin.seen)
        await peer.get(label, path, **extra)
        peer.record_seen(label + " seen", start)


#: What the reference sometimes says instead when a deadline passes: it
#: runs two timers of the same length and, under load, the outer one can
#: win. We always give the usual text (tests.test_http checks ours exactly).
ROUTE_TIMEOUT = "http/request failed: route-aware request timed out"


async def late(peer: HttpPeer, label: str, path: str, timeout_ms: int, message: str) -> None:
    """
    Record a request that runs out of time; C{message} (or the reference's
    other text) reads as C{<timed out>}.
    """
    reply = await peer.peer.call("http/request", peer.params(path, timeoutMs=timeout_ms), record=False)
    if reply.get("error", {}).get("message") in (message, ROUTE_TIMEOUT):
        reply["error"]["message"] = "<timed out>"
    peer.peer.record(label, view(reply))


async def deadlines(peer: HttpPeer) -> None:
    """
    timeoutMs: before the head it is a send error naming the URL, after it
    a body error, omitted it waits; a streamed body ends with the error.
    """
    await peer.peer.handshake()
    await late(peer, "head late", "/hold/late", 300,
               f"http/request failed: error sending request for url ({peer.url('/hold/late')})")
    await late(peer, "body late", "/slowbody/b", 500,
               "failed to read http/request response body: error decoding response body")
    await peer.stream("streamed body late", peer.params("/slowbody/s", timeoutMs=700, requestId="t",
                                                        streamResponse=True))
    waiting = peer.peer.request("http/request", peer.params("/hold/ok"))
    await peer.origin.received(len(peer.origin.seen) + 1)
    peer.origin.release("ok")
    peer.peer.record("no timeout", view(await peer.peer.response(waiting, record=False)))
    waiting = peer.peer.request("http/request", peer.params("/hold/max", timeoutMs=18446744073709551615))
    await peer.origin.received(len(peer.origin.seen) + 1)
    peer.origin.release("max")
    peer.peer.record("largest timeout", view(await peer.peer.response(waiting, record=False)))


async def streaming(peer: HttpPeer) -> None:
    """
    Streamed bodies: the response first, one frame per read, a final frame
    (with the error if the body broke), request ids per connection.
    """
    await peer.peer.handshake()
    await peer.stream("echo", peer.params(requestId="s1", streamResponse=True))
    await peer.stream("head", peer.params(method="HEAD", requestId="h", streamResponse=True))
    await peer.stream("204", peer.params("/status/204", requestId="n", streamResponse=True))
    await peer.stream("truncated", peer.params("/truncated", requestId="sh", streamResponse=True))
    await peer.stream("truncated chunked", peer.params("/truncated-chunked", requestId="sc", streamResponse=True))
    await peer.stream("big", peer.params("/bytes?n=5242880", requestId="big", streamResponse=True), exact=False)

    await peer.http("gated", peer.params("/chunks/g?n=4&size=7", requestId="g", streamResponse=True))
    frames = []
    for _ in range(4):
        frame = await peer.peer.queue.notification(lambda m: m["params"]["requestId"] == "g")
        frames.append(frame["params"])
        peer.origin.release("g")
    frames += await peer.deltas("g")
    peer.record_frames("gated frames", frames)

    await peer.http("dup first", peer.params("/chunks/d?n=1", requestId="dup", streamResponse=True))
    await peer.http("dup again", peer.params(method="G T", requestId="dup", streamResponse=True))
    await peer.http("dup bad header", peer.params(requestId="dup", streamResponse=True, headers=[
        {"name": "x", "value": "", "valueEnvVar": "OPENAI_API_KEY"}]))
    await peer.http("dup bad body", peer.params(requestId="dup", streamResponse=True, bodyBase64="!!"))
    await peer.http("dup buffered", peer.params(requestId="dup"))
    other = await peer.peer.reconnect()
    await other.handshake()
    await peer.http("dup other connection", peer.params(requestId="dup", streamResponse=True), peer=other)
    peer.record_frames("other connection frames", await peer.deltas("dup", peer=other))
    peer.origin.release("d")
    peer.record_frames("dup frames", await peer.deltas("dup"))
    await peer.stream("dup after done", peer.params(requestId="dup", streamResponse=True))

    await peer.http("failed stream", {"method": "GET", "url": "http://127.0.0.1:1/", "requestId": "f",
                                      "streamResponse": True})
    await peer.stream("after failure", peer.params(requestId="f", streamResponse=True))
    await peer.http("zero timeout stream", peer.params(requestId="z", streamResponse=True, timeoutMs=0))
    await peer.stream("after zero timeout", peer.params(requestId="z", streamResponse=True))


async def ordering(peer: HttpPeer) -> None:
    """
    A buffered request holds back the next request; a streamed one frees
    the connection once its head is in.
    """
    await peer.peer.handshake()
    held = peer.peer.request("http/request", peer.params("/hold/h"))
    status = peer.peer.request("environment/status")
    await peer.origin.received(1)
    peer.origin.release("h")
    first = await peer.peer.queue.next()
    second = await peer.peer.queue.next()
    peer.peer.record("reply order", [first["id"] == held, second["id"] == status])

    await peer.http("stream", peer.params("/chunks/o?n=2", requestId="o", streamResponse=True))
    await peer.peer.call("environment/status")
    peer.origin.release("o")
    peer.origin.release("o")
    peer.record_frames("frames", await peer.deltas("o"))


async def through_proxies(peer: HttpPeer) -> None:
    """
    Which requests the configured proxy sees, and how.
    """
    await peer.peer.handshake()
    port = peer.origin.port_number
    urls = [
        ("ip", peer.url("/echo#f")),
        ("localhost", peer.url(host="localhost")),
        ("idna", f"http://b\u00fccher.example:{port}/echo#frag"),
        ("idna.test", f"http://idna.test:{port}/echo"),
        ("https", "https://tls.example:1/x#f"),
    ]
    for label, url in urls:
        start, proxy_start = len(peer.origin.seen), len(peer.proxy.seen)
        await peer.http(label, {"method": "GET", "url": url, "requestId": "r", "timeoutMs": 5000,
                                "headers": [{"name": "x-probe", "value": "1"}]})
        peer.record_proxy(label + " proxy saw", proxy_start)
        peer.record_seen(label + " origin saw", start)


class Validation(HttpInteropTestCase):
    test_check_order = http_interop(check_order, env=ENV_FOR_HEADERS)
    test_params_and_values = http_interop(params_and_values, env=ENV_FOR_HEADERS)


class Exchanges(HttpInteropTestCase):
    test_request_on_the_wire = http_interop(request_on_the_wire)
    test_responses = http_interop(responses)
    test_redirects = http_interop(redirects)
    test_deadlines = http_interop(deadlines)
    test_streaming = http_interop(streaming)
    test_ordering = http_interop(ordering)


class Proxies(HttpInteropTestCase):
    test_http_proxy_with_credentials = http_interop(
        through_proxies, env={"HTTP_PROXY": "http://pu:p%20p@{proxy_address}"})
    test_lower_case_http_proxy = http_interop(through_proxies, env={"http_proxy": "{proxy}"})
    test_all_proxy_without_scheme = http_interop(through_proxies, env={"ALL_PROXY": "{proxy_address}"})
    test_https_proxy_only = http_interop(
        through_proxies, env={"HTTPS_PROXY": "http://user@{proxy_address}"})
    test_no_proxy_star_spares_names_not_addresses = http_interop(
        through_proxies, env={"HTTP_PROXY": "{proxy}", "NO_PROXY": "*"})
    test_no_proxy_lists = http_interop(
        through_proxies, env={"HTTP_PROXY": "{proxy}", "no_proxy": "127.0.0.1, .example,idna.test"})
    test_unusable_proxy_is_ignored = http_interop(through_proxies, env={"HTTP_PROXY": "::::"})
    test_refusing_proxy = http_interop(through_proxies, env={"HTTP_PROXY": "http://127.0.0.1:1"})
