"""``http.request`` against a real aiohttp server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from handlers import http
from orchestrator.context import TaskContext
from orchestrator.errors import NonRetryableError, TaskError


def make_ctx() -> TaskContext:
    return TaskContext(run_id=1, task_id="t", attempt=1, workflow="w", params={}, upstream={})


def build_app(release: asyncio.Event, peers: list[object]) -> web.Application:
    async def json_view(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response(
            {
                "hello": "world",
                "query": list(request.query.items()),
                "x_test": request.headers.get("X-Test"),
            }
        )

    async def echo_view(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "method": request.method,
                "content_type": request.content_type,
                "body": await request.json() if request.content_type.endswith("json") else None,
                "text": None if request.content_type.endswith("json") else await request.text(),
            }
        )

    async def text_view(request: web.Request) -> web.Response:
        return web.Response(text="héllo wörld", headers={"X-Thing": "1"})

    async def status_view(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"Retry-After": "7"} if code in (429, 503) else {}
        return web.Response(status=code, text=f"status page {code}", headers=headers)

    async def tattle_view(request: web.Request) -> web.Response:
        # A careless server that quotes the caller's credentials back in its error.
        return web.Response(
            status=int(request.match_info["code"]),
            text=f"bad token {request.query.get('token')} / {request.headers.get('Authorization')}",
        )

    async def hang_view(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    async def big_view(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["size"]))

    async def stream_view(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to check up front
        await response.prepare(request)
        for _ in range(int(request.match_info["chunks"])):
            await response.write(b"y" * 1000)
        await response.write_eof()
        return response

    async def empty_json_view(request: web.Request) -> web.Response:
        return web.Response(status=200, content_type="application/json", body=b"")

    async def bad_json_view(request: web.Request) -> web.Response:
        return web.Response(content_type="application/problem+json", text="{not json")

    app = web.Application()
    app.router.add_get("/json", json_view)
    app.router.add_route("*", "/echo", echo_view)
    app.router.add_get("/text", text_view)
    app.router.add_get("/status/{code}", status_view)
    app.router.add_get("/tattle/{code}", tattle_view)
    app.router.add_get("/hang", hang_view)
    app.router.add_get("/big/{size}", big_view)
    app.router.add_get("/stream/{chunks}", stream_view)
    app.router.add_get("/empty-json", empty_json_view)
    app.router.add_get("/bad-json", bad_json_view)
    return app


class Server:
    def __init__(self, test_server: BaseTestServer, peers: list[object]) -> None:
        self._server = test_server
        self.peers = peers

    def url(self, path: str) -> str:
        return str(self._server.make_url(path))


@pytest.fixture(autouse=True)
async def close_http_sessions() -> AsyncIterator[None]:
    yield
    await http.close_sessions()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    release = asyncio.Event()
    peers: list[object] = []
    async with TestServer(build_app(release, peers), host="127.0.0.1") as test_server:
        try:
            yield Server(test_server, peers)
        finally:
            # Client first, so the server has no idle keep-alive connection to
            # wait for; then let a hanging view finish so shutdown is immediate.
            await http.close_sessions()
            release.set()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_get_json(server: Server) -> None:
    result = await http.request(
        make_ctx(),
        url=server.url("/json") + "?from_url=1",
        params={"q": "a b", "n": 2, "flag": True, "tag": ["x", "y"], "skip": None},
        headers={"X-Test": "yes"},
    )
    assert result["status"] == 200
    assert result["json"] == {
        "hello": "world",
        "query": [
            ["from_url", "1"],
            ["q", "a b"],
            ["n", "2"],
            ["flag", "true"],
            ["tag", "x"],
            ["tag", "y"],
        ],
        "x_test": "yes",
    }
    assert result["text"] is None
    assert result["headers"]["content-type"].startswith("application/json")
    assert all(name == name.lower() for name in result["headers"])


async def test_post_json_body_is_echoed(server: Server) -> None:
    payload = {"a": 1, "nested": {"b": [1, 2, None]}, "s": "ü"}
    result = await http.request(make_ctx(), url=server.url("/echo"), method="post", json=payload)
    assert result["status"] == 200
    assert result["json"] == {
        "method": "POST",
        "content_type": "application/json",
        "body": payload,
        "text": None,
    }


async def test_text_body_and_text_response(server: Server) -> None:
    echoed = await http.request(make_ctx(), url=server.url("/echo"), method="PUT", body="plain")
    assert echoed["json"]["text"] == "plain"
    assert echoed["json"]["content_type"] == "text/plain"

    result = await http.request(make_ctx(), url=server.url("/text"))
    assert result["text"] == "héllo wörld"
    assert result["json"] is None
    assert result["headers"]["x-thing"] == "1"


async def test_empty_json_body_gives_none(server: Server) -> None:
    result = await http.request(make_ctx(), url=server.url("/empty-json"))
    assert result["json"] is None


async def test_invalid_json_body_fails(server: Server) -> None:
    with pytest.raises(http.HTTPRequestError, match="invalid JSON"):
        await http.request(make_ctx(), url=server.url("/bad-json"))


async def test_404_is_non_retryable(server: Server) -> None:
    with pytest.raises(http.HTTPRequestError) as info:
        await http.request(make_ctx(), url=server.url("/status/404"))
    error = info.value
    assert error.non_retryable is True
    assert error.status == 404
    assert error.method == "GET"
    message = str(error)
    assert message.startswith(f"GET {server.url('/status/404')} failed: HTTP 404 Not Found")
    assert "status page 404" in message  # the start of the body helps debugging


async def test_expected_non_2xx_status_is_returned(server: Server) -> None:
    result = await http.request(make_ctx(), url=server.url("/status/404"), expect_status=[404])
    assert result["status"] == 404
    assert result["text"] == "status page 404"
    with pytest.raises(http.HTTPRequestError, match="HTTP 200"):
        await http.request(make_ctx(), url=server.url("/json"), expect_status=[201])


@pytest.mark.parametrize("code", [503, 500, 429, 408])
async def test_5xx_408_and_429_are_retryable(server: Server, code: int) -> None:
    with pytest.raises(http.HTTPRequestError) as info:
        await http.request(make_ctx(), url=server.url(f"/status/{code}"))
    assert info.value.non_retryable is False
    assert info.value.status == code
    assert f"HTTP {code}" in str(info.value)
    if code in (429, 503):
        assert "Retry-After: 7" in str(info.value)


async def test_timeout_is_retryable(server: Server) -> None:
    with pytest.raises(http.HTTPRequestError) as info:
        await http.request(make_ctx(), url=server.url("/hang"), timeout_s=0.2)
    assert info.value.non_retryable is False
    assert info.value.status is None
    assert "timed out after 0.2 s" in str(info.value)


async def test_response_over_default_limit_fails_naming_it(server: Server) -> None:
    size = http.DEFAULT_MAX_RESPONSE_BYTES + 1
    with pytest.raises(http.HTTPRequestError) as info:
        await http.request(make_ctx(), url=server.url(f"/big/{size}"))
    assert "max_response_bytes=1048576" in str(info.value)


async def test_streamed_response_over_limit_fails(server: Server) -> None:
    with pytest.raises(http.HTTPRequestError, match="max_response_bytes=2500"):
        await http.request(make_ctx(), url=server.url("/stream/5"), max_response_bytes=2500)
    # Exactly at the limit is fine.
    result = await http.request(make_ctx(), url=server.url("/big/2500"), max_response_bytes=2500)
    assert result["text"] == "x" * 2500


async def test_connection_refused_is_retryable() -> None:
    url = f"http://127.0.0.1:{closed_port()}/nothing"
    with pytest.raises(http.HTTPRequestError) as info:
        await http.request(make_ctx(), url=url, timeout_s=2)
    assert info.value.non_retryable is False
    assert info.value.status is None
    assert str(info.value).startswith(f"GET {url} failed: ClientConnectorError")


async def test_secrets_in_url_never_appear_in_errors(server: Server) -> None:
    url = server.url("/status/503").replace("http://", "http://admin:hunter22@")
    with pytest.raises(http.HTTPRequestError) as info:
        await http.request(make_ctx(), url=url + "?token=secret&page=2")
    message = str(info.value)
    assert "secret" not in message
    assert "hunter22" not in message
    assert "admin" not in message
    assert "token=***&page=2" in message
    assert "secret" not in info.value.url

    refused = f"http://127.0.0.1:{closed_port()}/x?token=secret&api_key=k3y-value"
    with pytest.raises(http.HTTPRequestError) as info:
        await http.request(make_ctx(), url=refused, timeout_s=2)
    assert "secret" not in str(info.value)
    assert "k3y-value" not in str(info.value)


async def test_secrets_quoted_back_by_the_server_are_scrubbed(server: Server) -> None:
    with pytest.raises(http.HTTPRequestError) as info:
        await http.request(
            make_ctx(),
            url=server.url("/tattle/401") + "?token=s3cr3t-value",
            headers={"Authorization": "Bearer t0k3n-value"},
        )
    message = str(info.value)
    assert "bad token ***" in message
    assert "s3cr3t-value" not in message
    assert "t0k3n-value" not in message


async def test_one_session_and_connection_per_loop(server: Server) -> None:
    for _ in range(3):
        await http.request(make_ctx(), url=server.url("/json"))
    assert len(server.peers) == 3
    assert len(set(server.peers)) == 1  # keep-alive: one connection served all three
    await http.close_sessions()
    await http.request(make_ctx(), url=server.url("/json"))  # a closed session is replaced
    assert len(set(server.peers)) == 2


@pytest.mark.parametrize(
    ("inputs", "complaint"),
    [
        ({"url": "ftp://example.com/x"}, "http:// or https://"),
        ({"url": "/relative"}, "http:// or https://"),
        ({"url": "http://h/", "json": {"a": 1}, "body": "b"}, "either json or body"),
        ({"url": "http://h/", "method": "GE T"}, "method"),
        ({"url": "http://h/", "timeout_s": 0}, "timeout_s"),
        ({"url": "http://h/", "max_response_bytes": -1}, "max_response_bytes"),
        ({"url": "http://h/", "expect_status": ["200"]}, "expect_status"),
        ({"url": "http://h/", "headers": {"X": {"nested": 1}}}, "header"),
    ],
)
async def test_bad_inputs_are_non_retryable(inputs: dict[str, object], complaint: str) -> None:
    with pytest.raises(NonRetryableError, match=complaint):
        await http.request(make_ctx(), **inputs)  # type: ignore[arg-type]


async def test_errors_are_task_errors() -> None:
    assert issubclass(http.HTTPRequestError, TaskError)
