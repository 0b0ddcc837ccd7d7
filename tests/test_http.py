"""
C{http/request} through the connection core, against a real local origin
(L{tests.httpserver}). Deadlines run on a L{task.Clock}; everything else on
the reactor, waiting for events only.
"""

import base64
import gzip
import json
import os

from twisted.internet import reactor, task
from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from execserver import http, weburl
from execserver.httpclient import MAX_REDIRECTS, HttpClient
from execserver.httpproxy import NoProxy, ProxySettings, parse_proxy
from execserver.httpwire import HeaderMap, frame_request_body
from tests.httpserver import GZIP_TEXT, ForwardProxy, Origin, pattern
from tests.support import attach, build_exec_server, handshake, send


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body_of(reply) -> bytes:
    return base64.b64decode(reply["result"]["bodyBase64"])


def error_of(reply) -> dict:
    return reply["error"]


def failed(message: str) -> dict:
    return {"code": -32603, "message": message}


def invalid(message: str) -> dict:
    return {"code": -32602, "message": message}


class HttpTestCase(unittest.TestCase):
    """
    A server core with a handshaken connection, its own HTTP client and a
    fresh origin.
    """

    #: The environment the client reads its proxies from.
    environ: dict = {}
    tls = False

    def setUp(self):
        return ensureDeferred(self._setUp())

    async def _setUp(self):
        self.clock = task.Clock()
        self.origin = await Origin().start(tls=self.tls)
        self.addCleanup(self.origin.stop)
        self.server = build_exec_server(self, self.clock)
        self.client = HttpClient(reactor, self.environ, trust_root=self.origin.trust_root)
        http.use_client(self.server, self.client)
        self.addCleanup(self.client.close)
        self.connection, self.transport = attach(self.server)
        handshake(self.connection, self.transport)
        self._ids = 100

    def call(self, params, connection=None, transport=None):
        self._ids += 1
        send(connection or self.connection, {"id": self._ids, "method": "http/request", "params": params})
        return (transport or self.transport).reply(self._ids)

    def params(self, path="/echo", **extra):
        params = {"method": "GET", "url": self.origin.url(path), "requestId": "r"}
        params.update(extra)
        return params

    def fetch(self, path="/echo", **extra):
        return self.call(self.params(path, **extra))

    def send_only(self, path="/echo", **extra):
        """
        Send a request without waiting for its reply.
        """
        self._ids += 1
        send(self.connection, {"id": self._ids, "method": "http/request", "params": self.params(path, **extra)})

    async def seen(self, path="/echo", **extra):
        """
        The request as the origin saw it.
        """
        reply = await self.fetch(path, **extra)
        self.assertIn("result", reply, reply)
        return self.origin.seen[-1]

    def set_env(self, **variables):
        for name, value in variables.items():
            old = os.environ.get(name)
            os.environ[name] = value
            self.addCleanup(_restore, name, old)

    def deltas(self, request_id):
        return [m["params"] for m in self.transport.messages()
                if m.get("method") == "http/request/bodyDelta" and m["params"]["requestId"] == request_id]

    def terminal(self, request_id):
        return self.transport.wait_for(lambda m: m.get("method") == "http/request/bodyDelta"
                                       and m["params"]["requestId"] == request_id and m["params"]["done"])

    def streamed_body(self, request_id) -> bytes:
        return b"".join(base64.b64decode(d["deltaBase64"]) for d in self.deltas(request_id))


def _restore(name, old):
    if old is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = old


class ParamsTests(HttpTestCase):
    async def test_params_are_decoded_before_the_handshake_gate(self):
        connection, transport = attach(self.server)
        reply = await self.call({}, connection, transport)
        self.assertEqual(error_of(reply), invalid("missing field `method`"))
        reply = await self.call(self.params(bodyBase64="!!"), connection, transport)
        self.assertEqual(error_of(reply), invalid("Invalid symbol 33, offset 0."))

    async def test_valid_params_before_initialize_are_gated(self):
        connection, transport = attach(self.server)
        reply = await self.call(self.params(method="G T"), connection, transport)
        self.assertEqual(error_of(reply), {
            "code": -32600, "message": "client must call initialize before using http methods"})

    async def test_shapes_and_types(self):
        url = self.origin.url()
        cases = [
            (None, "invalid type: null, expected struct HttpRequestParams"),
            ([], "invalid length 0, expected struct HttpRequestParams with 8 elements"),
            ("x", 'invalid type: string "x", expected struct HttpRequestParams'),
            ({"method": "GET"}, "missing field `url`"),
            ({"method": "GET", "url": url}, "missing field `requestId`"),
            ({"method": 1, "url": url, "requestId": "r"}, "invalid type: number, expected a string"),
            (self.params(headers=None), "invalid type: null, expected a sequence"),
            (self.params(headers={"a": "b"}), "invalid type: map, expected a sequence"),
            (self.params(headers=[{"name": "x", "valueEnvVar": "V"}]), "missing field `value`"),
            (self.params(headers=[["x"]]), "invalid length 1, expected struct HttpHeader with 3 elements"),
            (self.params(headers=["x"]), 'invalid type: string "x", expected struct HttpHeader'),
            (self.params(bodyBase64=1), "invalid type: number, expected a string"),
            (self.params(timeoutMs="1"), 'invalid type: string "1", expected u64'),
            (self.params(timeoutMs=-1), "invalid number"),
            (self.params(timeoutMs=1.5), "invalid number"),
            (self.params(timeoutMs=2**64), "invalid number"),
            (self.params(streamResponse="true"), 'invalid type: string "true", expected a boolean'),
            (self.params(streamResponse=None), "invalid type: null, expected a boolean"),
            (self.params(redirectPolicy="Follow"), "unknown variant `Follow`, expected `follow` or `stop`"),
            (self.params(redirectPolicy=None), "invalid type: null, expected string or map"),
            (self.params(redirectPolicy=1), "invalid type: number, expected string or map"),
            (["GET", url], "invalid length 6, expected struct HttpRequestParams with 8 elements"),
            (["GET", url, [], None, None, "follow", "r", False, 1],
             "invalid length 9, expected fewer elements in array"),
        ]
        for params, message in cases:
            reply = await self.call(params)
            self.assertEqual(error_of(reply), invalid(message), params)

    async def test_positional_params_and_header_pairs(self):
        reply = await self.call(["GET", self.origin.url(), [["x-a", "v"]], None, None, "follow", "r", False])
        self.assertEqual(reply["result"]["status"], 200)
        self.assertEqual(self.origin.seen[-1].headers[0], ["x-a", "v"])

    async def test_nulls_and_unknown_fields_are_accepted(self):
        reply = await self.fetch(bodyBase64=None, timeoutMs=None, extra=1,
                                 headers=[{"name": "x-a", "value": "v", "valueEnvVar": None, "z": 1}])
        self.assertEqual(reply["result"]["status"], 200)

    async def test_base64_body_errors(self):
        for text, message in [("!!!", "Invalid symbol 33, offset 0."), ("aGk", "Invalid padding"),
                              ("-_-_", "Invalid symbol 45, offset 0."), ("aG k=", "Invalid symbol 32, offset 2."),
                              ("aGVs\nbG8=", "Invalid symbol 10, offset 4.")]:
            reply = await self.fetch(bodyBase64=text)
            self.assertEqual(error_of(reply), invalid(message), text)


class ValidationTests(HttpTestCase):
    async def test_methods_must_be_tokens(self):
        for method in ["GE T", "", "GET\n", "G(ET", "caf\u00e9"]:
            reply = await self.fetch(method=method)
            self.assertEqual(error_of(reply), invalid("http/request method is invalid: invalid HTTP method"))

    async def test_any_token_is_sent_verbatim(self):
        for method in ["get", "FOO", "A" * 20]:
            seen = await self.seen(method=method)
            self.assertEqual(seen.method, method)

    async def test_url_errors(self):
        cases = {
            "/echo": "relative URL without a base",
            "ht!tp://x/": "relative URL without a base",
            "": "relative URL without a base",
            "http:": "empty host",
            "http://127.0.0.1:99999/": "invalid port number",
            "http://[::1": "invalid IPv6 address",
            "http://a b/": "invalid international domain name",
            "http://1.2.3.256/": "invalid IPv4 address",
            "foo://a b": "invalid domain character",
        }
        for url, message in cases.items():
            reply = await self.call({"method": "GET", "url": url, "requestId": "r"})
            self.assertEqual(error_of(reply), invalid(f"http/request url is invalid: {message}"), url)

    async def test_only_http_and_https(self):
        for url, scheme in [("ftp://x", "ftp"), ("file:///etc/passwd", "file"), ("WS://x", "ws"),
                            ("mailto:a@b", "mailto"), ("data:text/plain,hi", "data")]:
            reply = await self.call({"method": "GET", "url": url, "requestId": "r"})
            self.assertEqual(error_of(reply),
                             invalid(f"http/request only supports http and https URLs, got {scheme}"))

    async def test_scheme_is_case_insensitive(self):
        reply = await self.call({"method": "GET", "url": self.origin.url().upper(), "requestId": "r"})
        self.assertEqual(reply["result"]["status"], 404)

    async def test_header_names(self):
        for name in ["a b", "", "a:b", "caf\u00e9", "a" * 70000]:
            reply = await self.fetch(headers=[{"name": name, "value": "v"}])
            self.assertEqual(error_of(reply), invalid("http/request header name is invalid: invalid HTTP header name"))

    async def test_header_values(self):
        for value in ["a\nb", "a\rb", "a\0b", "a\x7fb"]:
            reply = await self.fetch(headers=[{"name": "X-Up", "value": value}])
            self.assertEqual(error_of(reply), invalid(
                "http/request header value is invalid for X-Up: failed to parse header value"))

    async def test_env_var_appended_to_value(self):
        self.set_env(EXECSERVER_TEST_VAR=" sp ace ")
        seen = await self.seen(headers=[{"name": "x-a", "value": " pre ", "valueEnvVar": "EXECSERVER_TEST_VAR"}])
        self.assertEqual(seen.headers[0], ["x-a", " pre  sp ace "])

    async def test_env_var_lookup_is_case_sensitive(self):
        self.set_env(EXECSERVER_TEST_VAR="v")
        reply = await self.fetch(headers=[{"name": "x-a", "value": "", "valueEnvVar": "execserver_test_var"}])
        self.assertEqual(error_of(reply), invalid(
            "http/request header x-a requires executor environment variable execserver_test_var"))

    async def test_env_var_unset_and_empty(self):
        self.set_env(EXECSERVER_EMPTY="")
        os.environ.pop("EXECSERVER_UNSET", None)
        reply = await self.fetch(headers=[{"name": "x-a", "value": "", "valueEnvVar": "EXECSERVER_UNSET"}])
        self.assertEqual(error_of(reply), invalid(
            "http/request header x-a requires executor environment variable EXECSERVER_UNSET"))
        reply = await self.fetch(headers=[{"name": "x-a", "value": "", "valueEnvVar": "EXECSERVER_EMPTY"}])
        self.assertEqual(error_of(reply), invalid(
            "http/request header x-a requires a non-empty executor environment variable EXECSERVER_EMPTY"))
        reply = await self.fetch(headers=[{"name": "x-a", "value": "", "valueEnvVar": ""}])
        self.assertEqual(error_of(reply), invalid(
            "http/request header x-a requires executor environment variable "))

    async def test_denied_env_vars_in_any_case_echo_the_spelling(self):
        for variable in ["OPENAI_API_KEY", "codex_exec_server_noise_auth_token", "Aws_Session_Token"]:
            reply = await self.fetch(headers=[{"name": "Authorization", "value": "", "valueEnvVar": variable}])
            self.assertEqual(error_of(reply), invalid(
                f"http/request header Authorization cannot use executor environment variable {variable}"))

    async def test_env_value_must_be_a_valid_header_value(self):
        self.set_env(EXECSERVER_TEST_VAR="a\nb")
        reply = await self.fetch(headers=[{"name": "x-a", "value": "", "valueEnvVar": "EXECSERVER_TEST_VAR"}])
        self.assertEqual(error_of(reply), invalid(
            "http/request header value is invalid for x-a: failed to parse header value"))

    async def test_check_order(self):
        order = [
            ({"method": "G T", "url": "ftp://x"}, "http/request method is invalid: invalid HTTP method"),
            ({"url": "ftp://x", "headers": [{"name": "a b", "value": "v"}]},
             "http/request only supports http and https URLs, got ftp"),
            ({"headers": [{"name": "a b", "value": "p", "valueEnvVar": "OPENAI_API_KEY"}]},
             "http/request header name is invalid: invalid HTTP header name"),
            ({"headers": [{"name": "x", "value": "a\nb", "valueEnvVar": "OPENAI_API_KEY"}]},
             "http/request header x cannot use executor environment variable OPENAI_API_KEY"),
            ({"headers": [{"name": "x", "value": "a\nb"}, {"name": "a b", "value": "v"}]},
             "http/request header value is invalid for x: failed to parse header value"),
            ({"url": "ftp://x", "timeoutMs": 0}, "http/request only supports http and https URLs, got ftp"),
        ]
        for extra, message in order:
            reply = await self.fetch(**extra)
            self.assertEqual(error_of(reply), invalid(message), extra)

    async def test_zero_timeout_fails_at_once(self):
        reply = await self.fetch(timeoutMs=0)
        self.assertEqual(error_of(reply), failed("http/request failed: route-aware request timed out"))
        self.assertEqual(self.origin.seen, [])


class WireTests(HttpTestCase):
    async def test_defaults_are_accept_and_host_only(self):
        seen = await self.seen()
        self.assertEqual((seen.method, seen.target, seen.headers),
                         ("GET", "/echo", [["accept", "*/*"], ["host", self.origin.address]]))

    async def test_names_are_lower_case_and_grouped_by_first_appearance(self):
        headers = [("X-Zeta", "1"), ("x-alpha", "2"), ("X-Zeta", "3"), ("Accept", "text/plain"),
                   ("USER-AGENT", "ua/1")]
        seen = await self.seen(headers=[{"name": n, "value": v} for n, v in headers])
        self.assertEqual(seen.headers, [["x-zeta", "1"], ["x-zeta", "3"], ["x-alpha", "2"],
                                        ["accept", "text/plain"], ["user-agent", "ua/1"],
                                        ["host", self.origin.address]])

    async def test_values_are_sent_byte_for_byte(self):
        values = ["  v  ", "\tv\t", "", "caf\u00e9"]
        seen = await self.seen(headers=[{"name": f"x-{i}", "value": v} for i, v in enumerate(values)])
        self.assertEqual([value for _, value in seen.headers[:4]],
                         ["  v  ", "\tv\t", "", "caf\u00e9".encode().decode("latin-1")])

    async def test_a_host_header_replaces_the_default(self):
        seen = await self.seen(headers=[{"name": "Host", "value": "a"}, {"name": "host", "value": "b"}])
        self.assertEqual(seen.headers, [["host", "a"], ["host", "b"], ["accept", "*/*"]])

    async def test_body_gets_content_length_after_host(self):
        seen = await self.seen(method="POST", bodyBase64=b64(b"hello"))
        self.assertEqual(seen.headers[-2:], [["host", self.origin.address], ["content-length", "5"]])
        self.assertEqual(seen.body, b"hello")

    async def test_empty_body_has_no_content_length(self):
        for body in [None, ""]:
            seen = await self.seen(method="POST", bodyBase64=body)
            self.assertEqual([name for name, _ in seen.headers], ["accept", "host"])

    async def test_get_with_a_body(self):
        seen = await self.seen(bodyBase64=b64(b"payload"))
        self.assertEqual((seen.body, seen.headers[-1]), (b"payload", ["content-length", "7"]))

    async def test_large_body(self):
        data = pattern(3 * 1024 * 1024)
        seen = await self.seen(method="POST", bodyBase64=b64(data))
        self.assertEqual((len(seen.body), seen.body == data), (len(data), True))

    async def test_client_content_length_is_respected(self):
        seen = await self.seen(method="POST", bodyBase64=b64(b"hello"),
                               headers=[{"name": "content-length", "value": "3"}])
        self.assertEqual((seen.headers[0], seen.body), (["content-length", "3"], b"hel"))

    async def test_invalid_content_length_is_replaced_in_place(self):
        seen = await self.seen(method="POST", bodyBase64=b64(b"hello"), headers=[
            {"name": "x-a", "value": "1"}, {"name": "content-length", "value": "abc"}])
        self.assertEqual(seen.headers[:2], [["x-a", "1"], ["content-length", "5"]])

    async def test_client_transfer_encoding_makes_the_body_chunked(self):
        seen = await self.seen(method="POST", bodyBase64=b64(b"hello"),
                               headers=[{"name": "transfer-encoding", "value": "chunked"}])
        self.assertEqual(seen.headers[0], ["transfer-encoding", "chunked"])
        self.assertNotIn("content-length", [name for name, _ in seen.headers])
        self.assertEqual(seen.body, b"hello")

    async def test_url_credentials_become_basic_authorization(self):
        url = self.origin.url().replace("://", "://us%20er:p%40ss@")
        reply = await self.call({"method": "GET", "url": url, "requestId": "r",
                                 "headers": [{"name": "x-a", "value": "1"}]})
        self.assertEqual(reply["result"]["status"], 200)
        self.assertEqual(self.origin.seen[-1].headers[:2],
                         [["authorization", "Basic " + b64(b"us er:p@ss")], ["x-a", "1"]])

    async def test_a_client_authorization_wins_over_url_credentials(self):
        url = self.origin.url().replace("://", "://u:p@")
        await self.call({"method": "GET", "url": url, "requestId": "r", "headers": [
            {"name": "x-a", "value": "1"}, {"name": "Authorization", "value": "X"}]})
        self.assertEqual(self.origin.seen[-1].headers[:2], [["authorization", "X"], ["x-a", "1"]])

    async def test_fragment_never_sent_query_and_path_encoded(self):
        seen = await self.seen('/echo/a/../b/./caf\u00e9/%2F..//x?q=a b&c=\u00e9|"<>#frag')
        self.assertEqual(seen.target, "/echo/b/caf%C3%A9/%2F..//x?q=a%20b&c=%C3%A9|%22%3C%3E")

    async def test_host_is_normalised(self):
        reply = await self.call({"method": "GET", "url": self.origin.url(host="LOCALHOST"), "requestId": "r"})
        self.assertEqual(reply["result"]["status"], 200)
        self.assertEqual(self.origin.seen[-1].headers[-1], ["host", f"localhost:{self.origin.port_number}"])

    async def test_connect_method_uses_the_authority_form(self):
        seen = await self.seen(method="CONNECT")
        self.assertEqual(seen.target, self.origin.address)

    async def test_connections_are_reused(self):
        await self.seen()
        await self.seen()
        self.assertEqual(self.origin.seen[0].client_port, self.origin.seen[1].client_port)

    async def test_connection_close_from_the_client_is_passed_on(self):
        seen = await self.seen(headers=[{"name": "connection", "value": "close"}])
        self.assertEqual(seen.headers[0], ["connection", "close"])
        await self.origin.disconnected()


class ResponseTests(HttpTestCase):
    async def test_headers_grouped_non_ascii_values_dropped_hop_by_hop_kept(self):
        reply = await self.fetch("/headers")
        self.assertEqual(reply["result"], {"status": 200, "headers": [
            {"name": "x-mixed-case", "value": "One"}, {"name": "set-cookie", "value": "a=1"},
            {"name": "set-cookie", "value": "b=2"}, {"name": "x-repeat", "value": "r1"},
            {"name": "x-repeat", "value": "r2"}, {"name": "x-tab", "value": "a\tb"},
            {"name": "x-empty", "value": ""}, {"name": "connection", "value": "keep-alive"},
            {"name": "keep-alive", "value": "timeout=5"}, {"name": "content-length", "value": "2"},
            {"name": "x-last", "value": "z"}], "bodyBase64": b64(b"ok")})

    async def test_other_statuses_are_results(self):
        for status in [404, 500, 599, 300]:
            reply = await self.fetch(f"/status/{status}")
            self.assertEqual(reply["result"], {"status": status, "headers": [
                {"name": "content-length", "value": "11"}], "bodyBase64": b64(b"status body")})

    async def test_no_body_statuses_and_head(self):
        reply = await self.fetch("/status/204")
        self.assertEqual(reply["result"], {"status": 204, "headers": [], "bodyBase64": ""})
        reply = await self.fetch("/status/200", method="HEAD")
        self.assertEqual(reply["result"], {"status": 200, "headers": [
            {"name": "content-length", "value": "11"}], "bodyBase64": ""})

    async def test_gzip_is_not_decoded(self):
        reply = await self.fetch("/gzip", headers=[{"name": "accept-encoding", "value": "gzip"}])
        self.assertEqual(gzip.decompress(body_of(reply)), GZIP_TEXT)

    async def test_bodies_delimited_by_close_and_chunked_with_trailers(self):
        reply = await self.fetch("/until-close")
        self.assertEqual((reply["result"]["headers"], body_of(reply)), ([], b"read-until-close body"))
        reply = await self.fetch("/trailers")
        self.assertEqual(reply["result"]["headers"], [
            {"name": "transfer-encoding", "value": "chunked"}, {"name": "connection", "value": "close"},
            {"name": "trailer", "value": "X-T"}])
        self.assertEqual(body_of(reply), b"ok")

    async def test_interim_responses_are_skipped(self):
        reply = await self.fetch("/continue")
        self.assertEqual((reply["result"]["status"], body_of(reply)), (200, b"ok"))

    async def test_large_buffered_body(self):
        reply = await self.fetch("/bytes?n=5000000")
        self.assertEqual(body_of(reply), pattern(5000000))

    async def test_transport_failures_say_no_more_than_the_url(self):
        for path in ["/garbage", "/drop"]:
            reply = await self.fetch(path + "#frag")
            self.assertEqual(error_of(reply), failed(
                f"http/request failed: error sending request for url ({self.origin.url(path)}#frag)"))
        reply = await self.call({"method": "GET", "url": "http://127.0.0.1:1/x", "requestId": "r"})
        self.assertEqual(error_of(reply), failed(
            "http/request failed: error sending request for url (http://127.0.0.1:1/x)"))

    async def test_error_urls_are_serialised_without_credentials(self):
        reply = await self.call({"method": "GET", "url": "HTTP://u:p@127.0.0.1:1/a b#f g", "requestId": "r"})
        self.assertEqual(error_of(reply), failed(
            "http/request failed: error sending request for url (http://127.0.0.1:1/a%20b#f%20g)"))

    async def test_truncated_bodies(self):
        for path in ["/truncated", "/truncated-chunked"]:
            reply = await self.fetch(path)
            self.assertEqual(error_of(reply), failed(
                "failed to read http/request response body: error decoding response body"))

    async def test_timeout_before_the_head(self):
        pending = self.fetch("/hold/h", timeoutMs=500)
        await self.origin.received(1)
        self.clock.advance(0.499)
        self.assertEqual(self.transport.messages(), [])
        self.clock.advance(0.001)
        self.assertEqual(error_of(await pending), failed(
            f"http/request failed: error sending request for url ({self.origin.url('/hold/h')})"))
        await self.origin.disconnected()

    async def test_timeout_covers_the_body(self):
        # Nothing shows when the head is in, so this one runs on real time:
        # the head comes at once, the rest of the body never.
        server = build_exec_server(self)
        http.use_client(server, self.client)
        connection, transport = attach(server)
        handshake(connection, transport)
        reply = await self.call(self.params("/slowbody/b", timeoutMs=500), connection, transport)
        self.assertEqual(error_of(reply), failed(
            "failed to read http/request response body: error decoding response body"))

    async def test_no_timeout_waits(self):
        pending = self.fetch("/hold/h", timeoutMs=2**64 - 1)
        await self.origin.received(1)
        self.clock.advance(10 ** 9)
        self.origin.release("h")
        self.assertEqual((await pending)["result"]["status"], 200)

    async def test_a_buffered_request_holds_back_later_requests(self):
        pending = self.fetch("/hold/h")
        send(self.connection, {"id": 1, "method": "environment/status"})
        await self.origin.received(1)
        self.assertEqual(self.transport.messages(), [])
        self.origin.release("h")
        await pending
        self.assertEqual([m["id"] for m in self.transport.messages()], [self._ids, 1])


class RedirectTests(HttpTestCase):
    def redirect(self, code, to, **extra):
        return self.fetch(f"/redirect/{code}?to={to}", **extra)

    async def test_follows_up_to_ten(self):
        reply = await self.fetch(f"/chain/{MAX_REDIRECTS}")
        self.assertEqual(json.loads(body_of(reply))["target"], "/echo/final")
        reply = await self.fetch(f"/chain/{MAX_REDIRECTS + 1}")
        self.assertEqual(error_of(reply), failed("http/request failed: too many redirects"))
        self.assertEqual(len(self.origin.seen), MAX_REDIRECTS + 1 + MAX_REDIRECTS + 1)

    async def test_loops_are_too_many_redirects(self):
        reply = await self.fetch("/loop")
        self.assertEqual(error_of(reply), failed("http/request failed: too many redirects"))

    async def test_stop_returns_the_redirect(self):
        reply = await self.redirect(302, "/echo/after", redirectPolicy="stop")
        self.assertEqual(reply["result"], {"status": 302, "headers": [
            {"name": "location", "value": "/echo/after"}, {"name": "content-length", "value": "0"}],
            "bodyBase64": ""})

    async def test_post_becomes_get_on_301_302_303(self):
        headers = [{"name": "x-custom", "value": "1"}, {"name": "authorization", "value": "Bearer t"},
                   {"name": "content-type", "value": "text/plain"}, {"name": "cookie", "value": "c=1"}]
        for code in (301, 302, 303):
            await self.redirect(code, "/echo/after", method="POST", bodyBase64=b64(b"postbody"), headers=headers)
            after = self.origin.seen[-1]
            self.assertEqual((after.method, after.body), ("GET", b""))
            self.assertEqual(after.headers, [
                ["x-custom", "1"], ["authorization", "Bearer t"], ["cookie", "c=1"],
                ["referer", f"{self.origin.url('/redirect/')}{code}?to=/echo/after"],
                ["accept", "*/*"], ["host", self.origin.address]])

    async def test_307_and_308_keep_method_body_and_headers(self):
        for code in (307, 308):
            await self.redirect(code, "/echo/after", method="POST", bodyBase64=b64(b"postbody"),
                                headers=[{"name": "content-type", "value": "text/plain"}])
            after = self.origin.seen[-1]
            self.assertEqual((after.method, after.body, after.headers[0]),
                             ("POST", b"postbody", ["content-type", "text/plain"]))

    async def test_method_changes_only_where_reqwest_changes_it(self):
        cases = [("PUT", 303, "GET", b""), ("HEAD", 303, "HEAD", b""), ("DELETE", 302, "DELETE", b"postbody"),
                 ("PUT", 301, "PUT", b"postbody")]
        for method, code, after_method, after_body in cases:
            await self.redirect(code, "/echo/after", method=method, bodyBase64=b64(b"postbody"))
            after = self.origin.seen[-1]
            self.assertEqual((after.method, after.body), (after_method, after_body), (method, code))

    async def test_leaving_the_origin_strips_credentials_and_shortens_the_referer(self):
        target = self.origin.url("/echo/x", host="localhost")
        await self.redirect(302, target, headers=[
            {"name": "a", "value": "1"}, {"name": "authorization", "value": "t"}, {"name": "b", "value": "2"},
            {"name": "cookie", "value": "c"}, {"name": "c", "value": "3"}])
        self.assertEqual(self.origin.seen[-1].headers, [
            ["a", "1"], ["c", "3"], ["b", "2"], ["referer", self.origin.url("/")], ["accept", "*/*"],
            ["host", f"localhost:{self.origin.port_number}"]])

    async def test_the_referer_replaces_the_clients(self):
        await self.redirect(302, "/echo/a", headers=[{"name": "referer", "value": "mine"},
                                                     {"name": "x-b", "value": "1"}])
        self.assertEqual(self.origin.seen[-1].headers[:2],
                         [["x-b", "1"], ["referer", self.origin.url("/redirect/302?to=/echo/a")]])

    async def test_relative_locations(self):
        for location, target in [("../echo/z", "/echo/z"), ("/echo/f%23frag", "/echo/f"),
                                 ("//localhost:%d/echo/n" % self.origin.port_number, "/echo/n")]:
            reply = await self.redirect(302, location)
            self.assertEqual(json.loads(body_of(reply))["target"], target)

    async def test_unsupported_and_unparsable_targets(self):
        reply = await self.redirect(302, "ftp://127.0.0.1/x")
        self.assertEqual(error_of(reply), failed(
            "http/request failed: redirect target uses unsupported URL scheme: ftp"))
        reply = await self.redirect(302, "http://[bad")
        self.assertEqual(reply["result"]["status"], 302)

    async def test_failing_hop_is_named(self):
        reply = await self.redirect(302, "http://127.0.0.1:1/")
        self.assertEqual(error_of(reply), failed(
            "http/request failed: error sending request for url (http://127.0.0.1:1/)"))


class StreamTests(HttpTestCase):
    def stream(self, path="/echo", request_id="s", **extra):
        return self.fetch(path, requestId=request_id, streamResponse=True, **extra)

    async def test_response_first_then_numbered_deltas_then_done(self):
        reply = await self.stream()
        await self.terminal("s")
        wire = self.transport.sent
        self.assertEqual(json.loads(wire[0])["result"]["bodyBase64"], "")
        echo = json.loads(self.streamed_body("s"))
        self.assertEqual(echo["target"], "/echo")
        self.assertEqual(wire[-1], b'{"method":"http/request/bodyDelta","params":{"requestId":"s","seq":2,'
                                   b'"deltaBase64":"","done":true,"error":null}}')
        self.assertEqual(reply["result"]["status"], 200)

    async def test_one_delta_per_read(self):
        await self.stream("/chunks/g?n=4&size=7")
        for index in range(4):
            delta = await self.transport.wait_for(
                lambda m, i=index: m.get("method") == "http/request/bodyDelta" and m["params"]["seq"] == i + 1)
            self.assertEqual(base64.b64decode(delta["params"]["deltaBase64"]), bytes([ord("a") + index]) * 7)
            self.origin.release("g")
        await self.terminal("s")
        self.assertEqual([d["seq"] for d in self.deltas("s")], [1, 2, 3, 4, 5])

    async def test_deltas_are_split_at_the_limit(self):
        self.patch(http, "MAX_DELTA_BYTES", 1000)
        await self.stream("/bytes?n=100000")
        await self.terminal("s")
        sizes = [len(base64.b64decode(d["deltaBase64"])) for d in self.deltas("s")]
        self.assertEqual(max(sizes), 1000)
        self.assertEqual(self.streamed_body("s"), pattern(100000))

    async def test_empty_bodies_send_only_the_final_frame(self):
        await self.stream(method="HEAD", request_id="h")
        await self.terminal("h")
        self.assertEqual(self.deltas("h"), [
            {"requestId": "h", "seq": 1, "deltaBase64": "", "done": True, "error": None}])

    async def test_body_failure_ends_the_stream_with_an_error(self):
        await self.stream("/truncated")
        final = await self.terminal("s")
        self.assertEqual(self.streamed_body("s"), b"y" * 10)
        self.assertEqual(final["params"]["error"], "error decoding response body")

    async def test_timeout_during_the_body(self):
        await self.stream("/slowbody/b", timeoutMs=700)
        self.clock.advance(0.7)
        final = await self.terminal("s")
        self.assertEqual((final["params"]["seq"], final["params"]["error"]), (2, "error decoding response body"))

    async def test_an_active_request_id_is_refused_until_done(self):
        await self.stream("/chunks/d?n=1", request_id="dup")
        reply = await self.stream(request_id="dup", method="G T")
        self.assertEqual(error_of(reply), invalid("http/request streamResponse requestId `dup` is already active"))
        reply = await self.fetch(requestId="dup")
        self.assertEqual(reply["result"]["status"], 200)
        other, other_transport = attach(self.server)
        handshake(other, other_transport)
        reply = await self.call(self.params(requestId="dup", streamResponse=True), other, other_transport)
        self.assertEqual(reply["result"]["status"], 200)
        self.origin.release("d")
        await self.terminal("dup")
        reply = await self.stream(request_id="dup")
        self.assertEqual(reply["result"]["status"], 200)

    async def test_a_failed_stream_releases_its_id(self):
        reply = await self.call({"method": "GET", "url": "http://127.0.0.1:1/", "requestId": "s",
                                 "streamResponse": True})
        self.assertIn("error", reply)
        reply = await self.stream(timeoutMs=0)
        self.assertIn("error", reply)
        reply = await self.stream()
        self.assertEqual(reply["result"]["status"], 200)

    async def test_closing_the_connection_cancels_its_streams(self):
        await self.stream("/chunks/c?n=3")
        self.connection.connectionLost(None)
        await self.origin.disconnected()
        self.assertEqual(active_streams(self.connection), {})

    async def test_closing_the_connection_cancels_pending_requests(self):
        self.send_only("/hold/h", requestId="s", streamResponse=True)
        await self.origin.received(1)
        self.connection.connectionLost(None)
        await self.origin.disconnected()

    async def test_a_full_connection_pauses_the_download(self):
        size = 64 * 1024 * 1024
        self.connection.pauseProducing()
        await self.stream(f"/bytes?n={size}")
        await self.origin.paused.wait()
        self.assertLess(len(self.streamed_body("s")), size // 4)
        self.connection.resumeProducing()
        await self.terminal("s")
        self.assertEqual(len(self.streamed_body("s")), size)


def active_streams(connection):
    return connection.resources["http"].active


class TlsTests(HttpTestCase):
    tls = True

    async def test_https_with_a_trusted_certificate(self):
        reply = await self.fetch()
        self.assertEqual(json.loads(body_of(reply))["headers"][-1], ["host", self.origin.address])

    async def test_an_untrusted_certificate_is_a_send_error(self):
        http.use_client(self.server, HttpClient(reactor, {}))
        reply = await self.fetch()
        self.assertEqual(error_of(reply), failed(
            f"http/request failed: error sending request for url ({self.origin.url()})"))


class ProxyTestCase(HttpTestCase):
    def setUp(self):
        return ensureDeferred(self._proxy_setUp())

    async def _proxy_setUp(self):
        self.proxy = await ForwardProxy().start()
        self.addCleanup(self.proxy.stop)
        await self._setUp()

    def use_proxy_env(self, **environ):
        client = HttpClient(reactor, environ, trust_root=self.origin.trust_root)
        http.use_client(self.server, client)
        self.addCleanup(client.close)


class ProxyTests(ProxyTestCase):
    async def test_http_proxy_gets_the_absolute_form(self):
        self.use_proxy_env(HTTP_PROXY="http://pu:pp@" + self.proxy.url[7:])
        url = f"http://b\u00fccher.example:{self.origin.port_number}/echo#frag"
        reply = await self.call({"method": "GET", "url": url, "requestId": "r",
                                 "headers": [{"name": "x-probe", "value": "1"}]})
        self.assertEqual(reply["result"]["status"], 200)
        (seen,) = self.proxy.seen
        host = f"xn--bcher-kva.example:{self.origin.port_number}"
        self.assertEqual(seen.line, f"GET http://{host}/echo HTTP/1.1")
        self.assertEqual(seen.lines, ["x-probe: 1", "accept: */*", "proxy-authorization: Basic " + b64(b"pu:pp"),
                                      f"host: {host}"])

    async def test_https_goes_through_connect(self):
        self.use_proxy_env(ALL_PROXY=self.proxy.url[7:])
        reply = await self.call({"method": "GET", "url": "https://tls.example:1/x#f", "requestId": "r"})
        self.assertEqual(error_of(reply), failed(
            "http/request failed: error sending request for url (https://tls.example:1/x#f)"))
        (seen,) = self.proxy.seen
        self.assertEqual((seen.line, seen.lines), ("CONNECT tls.example:1 HTTP/1.1", ["Host: tls.example:1"]))

    async def test_loopback_is_proxied_unless_exempt(self):
        self.use_proxy_env(HTTP_PROXY=self.proxy.url, NO_PROXY="*")
        await self.seen()
        await self.call({"method": "GET", "url": self.origin.url(host="localhost"), "requestId": "r"})
        self.assertEqual([seen.line.split()[1] for seen in self.proxy.seen], [self.origin.url()])
        self.assertEqual(len(self.origin.seen), 2)


class TlsProxyTests(ProxyTestCase):
    tls = True

    async def test_https_through_the_tunnel(self):
        self.use_proxy_env(HTTPS_PROXY=self.proxy.url)
        reply = await self.call({"method": "GET", "url": self.origin.url(host="tls.example"), "requestId": "r"})
        self.assertEqual(reply["result"]["status"], 200)
        self.assertEqual(self.proxy.seen[0].line, f"CONNECT tls.example:{self.origin.port_number} HTTP/1.1")


class ProxySettingsTests(unittest.TestCase):
    def test_variables_and_precedence(self):
        settings = ProxySettings({"HTTP_PROXY": "http://a:1", "http_proxy": "http://b:2", "all_proxy": "c:3"})
        self.assertEqual((settings.http.host, settings.https.host), ("a", "c"))

    def test_unusable_values_are_ignored(self):
        self.assertIsNone(parse_proxy("::::"))
        self.assertIsNone(parse_proxy("ftp://x:1"))
        self.assertEqual(parse_proxy("127.0.0.1:8080").port, 8080)
        self.assertEqual(parse_proxy("http://u@h").authorization, b"Basic " + base64.b64encode(b"u:"))

    def test_cgi_ignores_http_proxy(self):
        self.assertIsNone(ProxySettings({"HTTP_PROXY": "h:1", "REQUEST_METHOD": "GET"}).http)

    def test_no_proxy(self):
        no_proxy = NoProxy("*, 10.0.0.0/8, ::1, .example.com, exact.org")
        self.assertTrue(no_proxy.exempts("localhost"))
        self.assertFalse(no_proxy.exempts("127.0.0.1"))
        self.assertTrue(no_proxy.exempts("10.1.2.3"))
        self.assertTrue(no_proxy.exempts("[::1]"))
        suffixes = NoProxy(".example.com,exact.org")
        self.assertTrue(suffixes.exempts("a.example.com"))
        self.assertTrue(suffixes.exempts("example.com"))
        self.assertTrue(suffixes.exempts("sub.exact.org"))
        self.assertFalse(suffixes.exempts("inexact.org"))


class FramingTests(unittest.TestCase):
    """
    How the body goes out, following hyper (the cases an origin cannot
    show without hanging).
    """

    def test_a_longer_declared_length_leaves_the_connection_unusable(self):
        headers = HeaderMap([(b"content-length", b"10")])
        self.assertEqual(frame_request_body(headers, b"hello"), (b"hello", False))

    def test_transfer_encoding_is_dropped_for_an_empty_body(self):
        headers = HeaderMap([(b"transfer-encoding", b"chunked"), (b"accept", b"*/*"), (b"host", b"h")])
        frame_request_body(headers, b"")
        self.assertEqual(list(headers.items()), [(b"host", b"h"), (b"accept", b"*/*")])

    def test_chunked_is_added_to_another_coding(self):
        headers = HeaderMap([(b"transfer-encoding", b"gzip"), (b"content-length", b"5")])
        payload, _ = frame_request_body(headers, b"hello")
        self.assertEqual(list(headers.items()), [(b"transfer-encoding", b"gzip, chunked")])
        self.assertEqual(payload, b"5\r\nhello\r\n0\r\n\r\n")


class UrlTests(unittest.TestCase):
    """
    URLs parse and serialize as the reference's (WHATWG, Rust url crate).
    """

    def test_serialization(self):
        cases = {
            "HTTP://127.0.0.1:1/\t\nx": "http://127.0.0.1:1/x",
            "http:\\\\h:1\\a\\b": "http://h:1/a/b",
            "http:h:1/a": "http://h:1/a",
            "https://h:443/": "https://h/",
            "http://h:/x": "http://h/x",
            "http://0x7f.1/": "http://127.0.0.1/",
            "http://4294967295/": "http://255.255.255.255/",
            "http://[::ffff:1.2.3.4]/": "http://[::ffff:102:304]/",
            "http://ex%41mple.com/": "http://example.com/",
            "http://b\u00fccher.example/#x y": "http://xn--bcher-kva.example/#x%20y",
            "http://Fa\u00df.DE/": "http://xn--fa-hia.de/",
            "http://a\u3002b/": "http://a.b/",
            "http://h/%2e%2E/x/%2e/y/..": "http://h/x/",
            "http://h/p'\"<>`{}^|\\x": "http://h/p'%22%3C%3E%60%7B%7D^|/x",
            "http://h/?q'\"<>`{}^|\\x": "http://h/?q%27%22%3C%3E`{}^|\\x",
            "http://h/#f'\"<>`{}^|\\x": "http://h/#f'%22%3C%3E%60{}^|\\x",
            "http://a@b@c.com/": "http://a%40b@c.com/",
        }
        for text, expected in cases.items():
            self.assertEqual(str(weburl.parse(text)), expected, text)

    def test_errors(self):
        cases = {
            "1http://x/": "relative URL without a base",
            "http://u@/": "empty host",
            "http://a.com:-1/": "invalid port number",
            "http://[::1]x/": "invalid IPv6 address",
            "http://[::1%25eth0]/": "invalid IPv6 address",
            "http://a.1/": "invalid IPv4 address",
            "http://08/": "invalid IPv4 address",
            "http://xn--a.com/": "invalid international domain name",
            "http://\u200d.com/": "invalid international domain name",
            "http://a%00b/": "invalid international domain name",
            "foo://a:99999/": "invalid port number",
        }
        for text, message in cases.items():
            with self.assertRaises(weburl.URLError, msg=text) as caught:
                weburl.parse(text)
            self.assertEqual(str(caught.exception), message, text)

    def test_relative_references(self):
        base = weburl.parse("http://h:1/a/b?q#f")
        cases = {
            "x?y": "http://h:1/a/x?y",
            "../z": "http://h:1/z",
            "?n": "http://h:1/a/b?n",
            "#g": "http://h:1/a/b?q#g",
            "": "http://h:1/a/b?q",
            "//o/p": "http://o/p",
            "\\\\o\\p": "http://o/p",
            "/r": "http://h:1/r",
            "http:s": "http://h:1/a/s",
            "https:s": "https://s/",
        }
        for text, expected in cases.items():
            self.assertEqual(str(weburl.parse(text, base)), expected, text)
