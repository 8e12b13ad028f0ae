"""The daemon's requests through httpcore's pools (``upstream_pool``), against real loopback servers.

The path must mean exactly what ``httpx.Client`` meant: the same bytes on the wire, the same
classes of error (so "not sent" and "maybe sent" are unchanged), a pooled connection the
server closed is never taken for a lost request, and a proxy in the environment still
goes through ``httpx.Client``, which honours it.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from galtea_local.errors import MaybeSentError, NotSentError, RetryLaterError
from galtea_local_daemon import upstream_pool, wire
from galtea_local_daemon.upstream import UpstreamClient
from tests.emulator_fixture import emulator, emulator_factory  # noqa: F401 (fixtures)
from tests.test_upstream import _no_proxy_env, _read_request, tcp_server  # noqa: F401 (fixtures)

KEY = "gsk_pool-test-key"


def _answer(conn: socket.socket, status: str, body: bytes, *, keep_alive: bool = True) -> None:
    close = "" if keep_alive else "Connection: close\r\n"
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{close}\r\n"
    conn.sendall(head.encode() + body)


def test_a_proxy_in_the_environment_keeps_requests_on_httpx() -> None:
    assert upstream_pool.usable(None, {})
    assert upstream_pool.usable(None, {"HTTPS_PROXY": "", "NO_PROXY": "*"})  # set but empty: no proxy
    for name in ("HTTPS_PROXY", "http_proxy", "All_Proxy"):
        assert not upstream_pool.usable(None, {name: "http://proxy.internal:3128"})
    assert not upstream_pool.usable(httpx.MockTransport(lambda request: httpx.Response(200)), {})


@pytest.mark.parametrize("body", [
    {"input": "¿Qué tal? 日本", "latency": 12.5, "nested": {"a": [1, None, True]}},
    {"sessionId": "s", "retrievalContext": "line\nbreak \"quoted\" \\ and \u2028"},
    None,
])
def test_bodies_are_the_bytes_httpx_sends(body) -> None:
    expected = httpx.Request("POST", "http://api.test/", json=body).content if body is not None else b""
    assert upstream_pool.encode(body) == expected


def test_the_request_on_the_wire_carries_our_headers_and_the_body(tcp_server) -> None:
    seen: list[bytes] = []

    def record(conn: socket.socket) -> None:
        seen.append(_read_request(conn))
        _answer(conn, "201 Created", b'{"id": "r1"}', keep_alive=False)

    url = tcp_server(record)
    with UpstreamClient(url + "/api/", KEY, extra_headers={"X-Tenant": "t1"}) as client:
        client.create_inference_result({"sessionId": "s", "input": "¿hola?"})
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines[1:])}
    assert lines[0] == b"POST /api/inferenceResults HTTP/1.1"
    assert headers[b"authorization"] == f"Bearer {KEY}".encode() and headers[b"x-tenant"] == b"t1"
    assert headers[b"content-type"] == headers[b"accept"] == b"application/json"
    assert headers[b"user-agent"].startswith(b"galtea-local/") and headers[b"host"] == url[7:].encode()
    assert body == '{"sessionId":"s","input":"¿hola?"}'.encode() == upstream_pool.encode(json.loads(body))
    assert int(headers[b"content-length"]) == len(body)


def test_a_body_that_cannot_be_sent_raises_before_anything_leaves(tcp_server) -> None:
    arrived = threading.Event()
    url = tcp_server(lambda conn: arrived.set())
    with UpstreamClient(url, KEY) as client:
        with pytest.raises(ValueError):
            client.create_inference_result({"latency": math.nan})
        with pytest.raises(TypeError):
            client.create_inference_result({"latency": object()})
    assert not arrived.wait(0.2)  # no connection was even opened


def test_a_kept_alive_connection_the_server_closed_is_replaced_not_lost(tcp_server) -> None:
    """The server answers, keeps the connection alive, then closes it while idle (as servers and
    proxies do after their keep-alive timeout). The next request must go on a new connection:
    no error, and above all no "maybe sent" for a create that never left."""
    connections: list[int] = []

    def answer_then_close_idle(conn: socket.socket) -> None:
        connections.append(1)
        _read_request(conn)
        _answer(conn, "201 Created", json.dumps({"id": f"r{len(connections)}"}).encode())
        time.sleep(0.1)  # idle: then the `with conn` in the server closes it

    url = tcp_server(answer_then_close_idle)
    with UpstreamClient(url, KEY) as client:
        assert client.create_inference_result({"sessionId": "s"})["id"] == "r1"
        time.sleep(0.4)  # the server has closed the pooled connection by now
        assert client.create_inference_result({"sessionId": "s"})["id"] == "r2"
    assert len(connections) == 2


def test_a_503_to_a_write_may_have_been_applied_and_to_a_read_not(tcp_server) -> None:
    def unavailable(conn: socket.socket) -> None:
        _read_request(conn)
        _answer(conn, "503 Service Unavailable", b'{"message": "busy"}', keep_alive=False)

    url = tcp_server(unavailable)
    with UpstreamClient(url, KEY) as client:
        with pytest.raises(RetryLaterError) as write:
            client.create_inference_result({"sessionId": "s"})
        with pytest.raises(RetryLaterError) as read:
            client.get_session("s1")
    assert write.value.maybe_sent and not read.value.maybe_sent


def test_a_proxy_from_the_environment_is_honoured(tcp_server, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    def proxy(conn: socket.socket) -> None:
        seen.append(_read_request(conn).split(b"\r\n", 1)[0])
        _answer(conn, "201 Created", b'{"id": "via-proxy"}', keep_alive=False)

    proxy_url = tcp_server(proxy)
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    with UpstreamClient("http://127.0.0.1:9", KEY) as client:  # nothing listens there: only the proxy answers
        assert client.create_inference_result({"sessionId": "s"})["id"] == "via-proxy"
    assert seen == [b"POST http://127.0.0.1:9/inferenceResults HTTP/1.1"]


def test_threads_share_one_client_each_on_its_own_pool(emulator) -> None:
    with UpstreamClient(emulator.url, emulator.api_key) as client:
        session = client.create_session(wire.session_body({"version_id": "v1"}))

        def create(n: int) -> str:
            return client.create_inference_result(wire.create_body({"session_id": session["id"], "input": f"{n}"}))["id"]

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(create, range(80)))
        assert len(set(ids)) == 80
        # One per thread, none shared: the 8 workers', and this thread's (it created the session).
        assert len(client._direct._open) == 9  # type: ignore[union-attr]


def test_an_answer_that_is_not_http_may_have_been_applied(tcp_server) -> None:
    def garbage(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    with UpstreamClient(tcp_server(garbage), KEY) as client:
        with pytest.raises(MaybeSentError) as info:
            client.create_inference_result({"sessionId": "s"})
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)


def test_a_chunked_answer_is_read_whole(tcp_server) -> None:
    def chunked(conn: socket.socket) -> None:
        _read_request(conn)
        body = b'{"id": "r1", "input": {"user_message": "hi"}}'
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                                                       for part in (body[:10], body[10:])) + b"0\r\n\r\n")

    with UpstreamClient(tcp_server(chunked), KEY) as client:
        assert client.create_inference_result({"sessionId": "s"}) == {"id": "r1", "input": {"user_message": "hi"}}


TLS = Path(__file__).parent / "data" / "tls"


@pytest.fixture
def tls_server(tcp_server) -> tuple[str, list[bytes]]:
    """A loopback HTTPS server with a self-signed certificate for 127.0.0.1: its URL, and the
    request lines it received (only a client that trusted it gets as far as sending one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS / "cert.pem", TLS / "key.pem")
    seen: list[bytes] = []

    def serve(raw: socket.socket) -> None:
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                seen.append(_read_request(conn).split(b"\r\n", 1)[0])
                _answer(conn, "201 Created", b'{"id": "over-tls"}', keep_alive=False)
        except (OSError, ssl.SSLError):
            pass  # the client refused our certificate

    return "https" + tcp_server(serve)[4:], seen


def test_tls_is_verified_and_a_refused_certificate_is_not_sent(tls_server) -> None:
    url, seen = tls_server
    with UpstreamClient(url, KEY) as client:  # certifi's roots: our self-signed certificate is refused
        with pytest.raises(NotSentError) as info:
            client.create_inference_result({"sessionId": "s"})
    assert isinstance(info.value.__cause__, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    with UpstreamClient(url, KEY, ca_bundle=str(TLS / "cert.pem")) as client:  # trusted: it goes
        assert client.create_inference_result({"sessionId": "s"})["id"] == "over-tls"
    assert seen == [b"POST /inferenceResults HTTP/1.1"]
