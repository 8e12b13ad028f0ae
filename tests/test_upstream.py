"""The upstream client: outcome classification, wire bodies, headers and settings.

Classification is tested through ``httpx.MockTransport`` (one branch each), and
through real loopback sockets for the transport failures a mock can only imitate.
"""

from __future__ import annotations

import email.utils
import enum
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import certifi
import httpx
import pytest

from galtea_local.config.schema import Secret
from galtea_local.errors import (
    AuthError,
    ConfigError,
    InvalidInputError,
    MaybeSentError,
    NotSentError,
    RejectedError,
    RetryLaterError,
)
from galtea_local_daemon import upstream, wire
from galtea_local_daemon.upstream import UpstreamClient, classify, extra_headers_from_env, parse_retry_after
from tests.emulator_fixture import emulator, emulator_factory  # noqa: F401 (fixtures)

KEY = "gsk_s3cr3t-KEY-never-shown"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # trust_env is on in the client: a proxy in the developer's shell must not reroute loopback tests.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_client() -> Iterator[Callable[..., UpstreamClient]]:
    """A factory: ``make_client(handler, **kwargs)`` over a MockTransport; closed at teardown."""
    made: list[UpstreamClient] = []

    def make(handler: Handler | None = None, **kwargs: object) -> UpstreamClient:
        transport = httpx.MockTransport(handler) if handler else None
        options = {"base_url": "https://api.test", "api_key": KEY, "transport": transport, **kwargs}
        client = UpstreamClient(**options)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def respond(status: int, body: object = None, *, headers: dict[str, str] | None = None, text: str | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


# -- classification: transport failures ------------------------------------------------------

NOT_SENT = [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full"),
            httpx.ProxyError("407 from proxy"), httpx.UnsupportedProtocol("gopher")]
MAYBE_SENT = [httpx.ReadTimeout("slow"), httpx.WriteTimeout("slow"), httpx.ReadError("reset"),
              httpx.WriteError("broken pipe"), httpx.CloseError("close"),
              httpx.RemoteProtocolError("Server disconnected without sending a response."),
              httpx.LocalProtocolError("bad"), httpx.DecodingError("gzip"), RuntimeError("unknown")]


@pytest.mark.parametrize("exc", NOT_SENT, ids=lambda e: type(e).__name__)
def test_failures_before_any_byte_left_are_not_sent(make_client, exc: Exception) -> None:
    with pytest.raises(NotSentError) as info:
        make_client(raising(exc)).get_inference_result("r1")
    assert info.value.status is None
    assert "GET /inferenceResults/r1" in str(info.value)
    assert info.value.__cause__ is exc  # kept for logs, never raised itself


@pytest.mark.parametrize("exc", MAYBE_SENT, ids=lambda e: type(e).__name__)
def test_failures_after_sending_may_have_been_applied(make_client, exc: Exception) -> None:
    with pytest.raises(MaybeSentError):
        make_client(raising(exc)).create_inference_result({"sessionId": "s"})


def test_an_error_already_classified_passes_through() -> None:
    error = RetryLaterError("x", retry_after=1)
    assert classify(error) is error


@pytest.fixture
def tcp_server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """Start a loopback TCP server whose every connection runs ``behaviour(conn)``; returns its URL."""
    servers: list[socket.socket] = []

    def start(behaviour: Callable[[socket.socket], None]) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    behaviour(conn)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


def _read_request(conn: socket.socket) -> bytes:
    """Read one whole request, body included, and return it: a socket closed with unread bytes
    in its buffer sends a reset, not a clean close, and the test would see either one by chance."""
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def test_real_connection_refused_is_not_sent(make_client) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    # The port was just released and nothing listens on it now.
    with pytest.raises(NotSentError):
        make_client(base_url=f"http://127.0.0.1:{port}").get_session("s1")


def test_real_dns_failure_is_not_sent(make_client) -> None:
    client = make_client(base_url="https://no-such-host.invalid", timeouts=(3, 3, 3, 3))
    with pytest.raises(NotSentError):
        client.get_session("s1")


def test_real_server_closing_without_an_answer_is_maybe_sent(make_client, tcp_server) -> None:
    url = tcp_server(_read_request)  # reads the request, then hangs up
    with pytest.raises(MaybeSentError) as info:
        make_client(base_url=url).create_inference_result({"sessionId": "s"})
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)


def test_real_read_timeout_is_maybe_sent(make_client, tcp_server) -> None:
    release = threading.Event()
    url = tcp_server(lambda conn: (_read_request(conn), release.wait(5)))
    try:
        with pytest.raises(MaybeSentError) as info:
            make_client(base_url=url, timeouts=(2, 0.2, 2, 2)).create_inference_result({"sessionId": "s"})
    finally:
        release.set()
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


# -- classification: statuses ----------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 501, 502, 504, 507, 599, 408, 302, 307])
def test_server_errors_timeouts_and_redirects_are_maybe_sent(make_client, status: int) -> None:
    with pytest.raises(MaybeSentError) as info:
        make_client(respond(status, {"message": "boom"})).create_inference_result({"sessionId": "s"})
    assert info.value.status == status


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_is_auth_error(make_client, status: int) -> None:
    with pytest.raises(AuthError) as info:
        make_client(respond(status, {"message": "Invalid API key"})).list_sessions(ids=["s"])
    assert info.value.status == status
    assert "Invalid API key" in str(info.value)


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_is_retry_later_with_delta_seconds(make_client, status: int) -> None:
    client = make_client(respond(status, {"message": "slow down"}, headers={"Retry-After": "2"}))
    with pytest.raises(RetryLaterError) as info:
        client.create_inference_result({"sessionId": "s"})
    assert (info.value.status, info.value.retry_after) == (status, 2.0)


def test_retry_after_as_http_date_is_relative_to_now() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    response = httpx.Response(429, headers={"Retry-After": date})
    error = classify(response, now=now)
    assert isinstance(error, RetryLaterError) and error.retry_after == 30.0


def test_retry_after_as_http_date_through_the_client(make_client) -> None:
    date = email.utils.formatdate(usegmt=True)  # "now", at second resolution
    with pytest.raises(RetryLaterError) as info:
        make_client(respond(503, headers={"Retry-After": date})).get_session("s")
    assert 0.0 <= info.value.retry_after <= 1.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), (" 120 ", 120.0), ("1.5", 1.5), (None, None), ("", None), ("soon", None), ("-5", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
     ("Tue, 14 Nov 2023 22:13:50 -0000", 30.0)],  # zone -0000 parses naive: still GMT
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_700_000_000.0) == expected


def test_rejection_carries_the_api_json_message(make_client) -> None:
    client = make_client(respond(400, {"statusCode": 400, "message": "No session with custom id x"}))
    with pytest.raises(RejectedError) as info:
        client.create_inference_result({"sessionCustomId": "x", "versionId": "v"})
    assert info.value.status == 400
    assert info.value.message.endswith(": No session with custom id x")


def test_rejection_joins_a_list_of_validation_messages(make_client) -> None:
    client = make_client(respond(422, {"message": ["latency must be a number", "input is required"]}))
    with pytest.raises(RejectedError, match="latency must be a number; input is required"):
        client.create_inference_result({"sessionId": "s"})


def test_rejection_without_json_uses_the_body_text_truncated(make_client) -> None:
    client = make_client(respond(413, text="x" * 2000))
    with pytest.raises(RejectedError) as info:
        client.create_inference_result({"sessionId": "s"})
    assert "x" * upstream.MESSAGE_LIMIT + "…" in info.value.message
    assert "x" * (upstream.MESSAGE_LIMIT + 1) not in info.value.message


def test_missing_entity_on_get_is_rejected_with_404(make_client) -> None:
    with pytest.raises(RejectedError) as info:
        make_client(respond(404, {"message": "Inference result not found"})).get_inference_result("gone")
    assert info.value.status == 404 and "Inference result not found" in info.value.message


def test_delete_of_a_missing_record_succeeds(make_client) -> None:
    assert make_client(respond(404, {"message": "not found"})).delete_inference_result("gone") is None
    assert make_client(respond(204, text="")).delete_inference_result("r1") is None


def test_delete_still_raises_other_errors(make_client) -> None:
    with pytest.raises(MaybeSentError):
        make_client(respond(502, text="bad gateway")).delete_inference_result("r1")


@pytest.mark.parametrize("body", ["not json", "", "[1, 2]"])
def test_success_with_an_unreadable_body_is_maybe_sent(make_client, body: str) -> None:
    with pytest.raises(MaybeSentError) as info:
        make_client(respond(201, text=body)).create_inference_result({"sessionId": "s"})
    assert info.value.status == 201


def test_list_expects_a_json_array(make_client) -> None:
    with pytest.raises(MaybeSentError):
        make_client(respond(200, {"data": []})).list_inference_results(session_ids=["s"])


def test_success_returns_the_parsed_json_as_sent(make_client) -> None:
    record = {"id": "r1", "sessionId": "s", "index": 0, "createdAt": "2025-01-01T00:00:00Z"}
    assert make_client(respond(201, record)).create_inference_result({"sessionId": "s"}) == record
    assert make_client(respond(200, [record])).list_inference_results(ids=["r1"]) == [record]


# -- requests: method, path, query, body, headers --------------------------------------------

class Recorder:
    """A MockTransport handler that keeps every request and answers with ``body``."""

    def __init__(self, body: object = None, status: int = 200) -> None:
        self.requests: list[httpx.Request] = []
        self.body, self.status = body, status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def test_each_method_sends_the_documented_request(make_client) -> None:
    rec = Recorder({"id": "r1"})
    client = make_client(rec)
    client.create_inference_result({"sessionId": "s", "status": "GENERATED"})
    assert (rec.last.method, rec.last.url.path, json.loads(rec.last.content)) == (
        "POST", "/inferenceResults", {"sessionId": "s", "status": "GENERATED"})
    client.update_inference_result("r1", {"status": "FAILED", "error": None})
    assert (rec.last.method, rec.last.url.path, json.loads(rec.last.content)) == (
        "PATCH", "/inferenceResults/r1", {"status": "FAILED", "error": None})
    client.get_inference_result("r1")
    assert (rec.last.method, rec.last.url.path) == ("GET", "/inferenceResults/r1")
    client.delete_inference_result("r1")
    assert (rec.last.method, rec.last.url.path) == ("DELETE", "/inferenceResults/r1")
    client.create_session({"versionId": "v", "customId": "c", "isProduction": None})
    assert (rec.last.method, rec.last.url.path) == ("POST", "/sessions")
    client.get_session("s1")
    assert (rec.last.method, rec.last.url.path) == ("GET", "/sessions/s1")


def test_list_query_repeats_bracketed_keys_like_the_sdk(make_client) -> None:
    rec = Recorder([])
    client = make_client(rec)
    client.list_inference_results(session_ids=["s 1", "s2"], from_created_at="2025-01-01T00:00:00.000Z",
                                  offset=0, limit=100)
    assert rec.last.url.query.decode() == (
        "sessionIds[]=s+1&sessionIds[]=s2&fromCreatedAt=2025-01-01T00%3A00%3A00.000Z"
        "&offset=0&limit=100&sort[]=createdAt&sort[]=asc")
    client.list_inference_results(ids="r1", sort=None)  # a bare string is one id
    assert rec.last.url.query.decode() == "ids[]=r1"
    client.list_sessions(custom_ids=["c1"], version_ids=["v1"])
    assert rec.last.url.query.decode() == "versionIds[]=v1&customIds[]=c1"
    with pytest.raises(InvalidInputError):
        client.list_inference_results(ids=["r1"], sort="newest")


@pytest.mark.parametrize("bad", ["", "a/b", "..", None])
def test_remote_ids_must_be_one_path_segment(make_client, bad) -> None:
    with pytest.raises(InvalidInputError):
        make_client(Recorder()).get_inference_result(bad)


def test_headers_name_us_and_carry_the_key_and_extra_headers(make_client) -> None:
    rec = Recorder({"id": "r1"})
    make_client(rec, extra_headers={"X-Gateway-Key": "gw"}).create_inference_result({"sessionId": "s"})
    headers = rec.last.headers
    assert headers["authorization"] == f"Bearer {KEY}"
    assert re.fullmatch(r"galtea-local/\S+ python/\d+\.\d+\.\d+ httpx/\S+", headers["user-agent"])
    assert headers["content-type"] == "application/json"
    assert headers["x-gateway-key"] == "gw"


def test_key_may_come_as_a_config_secret(make_client) -> None:
    rec = Recorder({"id": "s"})
    make_client(rec, api_key=Secret(KEY)).get_session("s")
    assert rec.last.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("name", ["Authorization", "user-agent", "Host"])
def test_extra_headers_may_not_override_ours(make_client, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        make_client(Recorder(), extra_headers={name: "Bearer topsecret"})


def test_base_url_path_prefix_and_trailing_slash(make_client) -> None:
    rec = Recorder({"id": "s"})
    client = make_client(rec, base_url="https://gw.test/galtea/")
    assert client.base_url == "https://gw.test/galtea"
    client.get_session("s")
    assert str(rec.last.url) == "https://gw.test/galtea/sessions/s"


def test_client_is_shared_safely_by_threads(make_client) -> None:
    rec = Recorder({"id": "r"}, status=201)
    client = make_client(rec, max_connections=8)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: client.create_inference_result({"sessionId": f"s{i}"}), range(400)))
    assert len(results) == 400 and len(rec.requests) == 400


# -- the key is never shown --------------------------------------------------------------------

def test_key_is_masked_in_repr(make_client) -> None:
    client = make_client(Recorder())
    assert KEY not in repr(client) and "gsk_****" in repr(client)
    assert KEY not in repr(client.__dict__)


@pytest.mark.parametrize("handler", [
    respond(400, {"message": f"bad header Authorization: Bearer {KEY}"}),  # a server echoing us
    respond(401, text=f"Bearer {KEY} refused"),
    respond(500, text="boom"),
    raising(httpx.ConnectError("refused")),
    raising(httpx.ReadTimeout("slow")),
], ids=["400-echo", "401-echo", "500", "connect", "read-timeout"])
def test_key_never_in_errors_or_logs(make_client, caplog: pytest.LogCaptureFixture, handler: Handler) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(upstream.UpstreamError) as info:
        make_client(handler).create_inference_result({"sessionId": "s"})
    assert KEY not in str(info.value) and KEY not in repr(info.value) and KEY not in info.value.message
    assert KEY not in caplog.text


@pytest.mark.parametrize("bad_key", ["", "gsk_with space", f"{KEY}\r\nX-Evil: 1", "gsk_é"])
def test_malformed_key_is_refused_without_echo(bad_key: str) -> None:
    with pytest.raises(ConfigError) as info:
        UpstreamClient("https://api.test", bad_key)
    assert not bad_key or bad_key not in str(info.value)


# -- settings: base URL, TLS, timeouts ---------------------------------------------------------

@pytest.mark.parametrize("url", ["http://api.galtea.ai", "http://10.0.0.5:8080", "http://localhost.evil.com"])
def test_plain_http_is_refused_off_loopback(url: str) -> None:
    with pytest.raises(ConfigError, match="http://"):
        UpstreamClient(url, KEY)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://127.9.9.9", "http://[::1]:8000",
                                 "http://localhost:1/", "http://LOCALHOST"])
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    with UpstreamClient(url, KEY) as client:
        assert client.base_url == url.rstrip("/")


def test_plain_http_anywhere_when_configured() -> None:
    with UpstreamClient("http://api.internal", KEY, allow_insecure_http=True) as client:
        assert client.base_url == "http://api.internal"


def test_default_base_url() -> None:
    with UpstreamClient(api_key=KEY) as client:
        assert client.base_url == "https://api.galtea.ai"


@pytest.mark.parametrize("url", ["ftp://api.test", "https://", "https://user:pw@api.test", "https://api.test/?q=1"])
def test_malformed_base_url_is_refused_without_echoing_credentials(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        UpstreamClient(url, KEY)
    assert "pw" not in str(info.value)


def test_ca_bundle_must_load(tmp_path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        UpstreamClient("https://api.test", KEY, ca_bundle=str(tmp_path / "missing.pem"))
    with UpstreamClient("https://api.test", KEY, ca_bundle=certifi.where()) as client:
        assert client._http._transport._pool._ssl_context.verify_mode.name == "CERT_REQUIRED"


def test_timeouts_are_applied_and_checked() -> None:
    with UpstreamClient("https://api.test", KEY, timeouts=(1, 2, 3, 4)) as client:
        assert client._http.timeout == httpx.Timeout(connect=1, read=2, write=3, pool=4)
    with pytest.raises(ConfigError, match="timeouts"):
        UpstreamClient("https://api.test", KEY, timeouts=(1, 2, 3))


# -- GALTEA_EXTRA_HEADERS ----------------------------------------------------------------------

def test_extra_headers_from_env() -> None:
    assert extra_headers_from_env({}) == {}
    assert extra_headers_from_env({"GALTEA_EXTRA_HEADERS": "  "}) == {}
    assert extra_headers_from_env({"GALTEA_EXTRA_HEADERS": '{"X-IBM-Client-Id": "abc"}'}) == {"X-IBM-Client-Id": "abc"}


@pytest.mark.parametrize("raw", [
    '{"X-Key": "topsecret"',          # invalid JSON
    '["topsecret"]',                  # not an object
    '{"X-Key": 12345678}',            # not a string value
    '{"X-Key": "top\\r\\nsecret"}',   # a line break in the value
    '{"X Key topsecret": "v"}',       # a bad name
    '{"X-Key": "topsecret", "x-key": "topsecret"}',  # the same name twice
    '{"Authorization": "Bearer topsecret"}',  # a name we set ourselves
])
def test_malformed_extra_headers_name_the_variable_never_the_value(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        extra_headers_from_env({"GALTEA_EXTRA_HEADERS": raw})
    assert "GALTEA_EXTRA_HEADERS" in str(info.value)
    assert "topsecret" not in str(info.value) and "12345678" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


# -- wire bodies -------------------------------------------------------------------------------

class Status(str, enum.Enum):
    PENDING = "PENDING"


def test_create_body_maps_every_field_and_drops_none() -> None:
    fields = {name: f"v-{name}" for name in wire.CREATE_FIELDS if name not in ("product_id", "status")}
    body = wire.create_body({**fields, "product_id": None, "status": "pending"})
    assert body == {wire.CREATE_FIELDS[name]: value for name, value in fields.items()} | {"status": "PENDING"}
    assert wire.create_body({"session_id": "s", "latency": None, "error": None}) == {
        "sessionId": "s", "status": "GENERATED"}


@pytest.mark.parametrize("status", [None, "generated", "Failed", Status.PENDING])
def test_create_body_always_has_an_upper_case_status(status) -> None:
    body = wire.create_body({"session_id": "s", "status": status})
    assert body["status"] == (str(getattr(status, "value", status)).upper() if status else "GENERATED")


def test_create_body_version_id_wins_over_product_id() -> None:
    both = {"session_custom_id": "c", "version_id": "v", "product_id": "p"}
    assert wire.create_body(both) == {"sessionCustomId": "c", "versionId": "v", "status": "GENERATED"}
    assert wire.create_body({"session_custom_id": "c", "product_id": "p"})["productId"] == "p"


def test_update_body_keeps_explicit_none_and_only_given_keys() -> None:
    body = wire.update_body({"actual_output": "hi", "error": None, "status": "failed", "cost_per_input_token": 0.1})
    assert body == {"actualOutput": "hi", "error": None, "status": "FAILED", "costPerInputToken": 0.1}
    assert wire.update_body({"status": None}) == {"status": None}
    assert wire.update_body({}) == {}


@pytest.mark.parametrize(("build", "fields"), [
    (wire.create_body, {"sessionId": "camel"}),
    (wire.update_body, {"version_id": "create-only"}),
    (wire.session_body, {"input": "not a session field"}),
])
def test_unknown_fields_are_refused(build, fields) -> None:
    with pytest.raises(InvalidInputError, match=next(iter(fields))):
        build(fields)


def test_session_body_always_sends_is_production_like_the_sdk() -> None:
    assert wire.session_body({"custom_id": "c", "version_id": "v", "product_id": "p", "metadata": None}) == {
        "customId": "c", "versionId": "v", "isProduction": None}
    assert wire.session_body({"product_id": "p", "is_production": True}) == {"productId": "p", "isProduction": True}


# -- against the emulator, a real HTTP server on loopback ---------------------------------------

@pytest.fixture
def real_client(emulator) -> Iterator[UpstreamClient]:
    with UpstreamClient(emulator.url, emulator.api_key) as client:
        yield client


def test_round_trip_against_the_emulator(real_client: UpstreamClient) -> None:
    session = real_client.create_session(wire.session_body({"version_id": "v1", "custom_id": "conv-1"}))
    assert real_client.list_sessions(custom_ids=["conv-1"], version_ids=["v1"])[0]["id"] == session["id"]
    first = real_client.create_inference_result(
        wire.create_body({"session_id": session["id"], "input": "hi", "status": "pending", "latency": None}))
    second = real_client.create_inference_result(wire.create_body(
        {"session_custom_id": "conv-1", "version_id": "v1", "product_id": "p1", "input": "again",
         "actual_output": "ok", "input_tokens": 3, "cost": 0.5}))
    assert (first["status"], first["index"], second["index"]) == ("PENDING", 0, 1)
    assert second["sessionId"] == session["id"]

    updated = real_client.update_inference_result(
        first["id"], wire.update_body({"status": "generated", "actual_output": "hello", "error": None}))
    assert (updated["status"], updated["actualOutput"]) == ("GENERATED", "hello")

    listed = real_client.list_inference_results(session_ids=[session["id"]], from_created_at=first["createdAt"])
    assert [r["id"] for r in listed] == [first["id"], second["id"]]
    assert (listed[1]["inputTokens"], listed[1]["cost"]) == (3, 0.5)
    assert real_client.get_inference_result(first["id"])["actualOutput"] == "hello"

    real_client.delete_inference_result(first["id"])
    real_client.delete_inference_result(first["id"])  # already gone: still success
    with pytest.raises(RejectedError) as info:
        real_client.get_inference_result(first["id"])
    assert info.value.status == 404


def test_emulator_refusals_are_classified(emulator, real_client: UpstreamClient) -> None:
    with pytest.raises(RejectedError, match="sessionCustomId"):
        real_client.create_inference_result(wire.create_body({"session_custom_id": "c"}))
    with UpstreamClient(emulator.url, "gsk_wrong_key") as wrong, pytest.raises(AuthError):
        wrong.list_sessions(ids=["s"])
    emulator.set_faults(throttle_rate=1.0, retry_after_s=2)
    with pytest.raises(RetryLaterError) as info:
        real_client.get_session("s")
    assert info.value.retry_after == 2.0
