"""serve/security.py: each rule on a small FastAPI app through Starlette's TestClient.

The app counts the calls that reach its handlers, so a refused request is seen to run nothing.
"""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from attnlab.serve.security import SecurityConfig, _same_origin, bind_warning, install, is_loopback

KEY = "sk-test-123"
JSON = {"Content-Type": "application/json"}


def small_app(cfg: SecurityConfig) -> tuple[FastAPI, list[str]]:
    app, ran = FastAPI(), []

    @app.get("/health")
    def health():
        ran.append("health")
        return {"status": "ok"}

    @app.post("/v1/echo")
    async def echo(request: Request):
        ran.append("echo")
        body = await request.body()
        return {"n": len(body), "head": body[:20].decode(errors="replace")}

    install(app, cfg)
    return app, ran


def client(cfg: SecurityConfig, host: str = "127.0.0.1:8000") -> tuple[TestClient, list[str]]:
    app, ran = small_app(cfg)
    return TestClient(app, base_url=f"http://{host}"), ran


def auth(key: str = KEY) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer {key}"}


def assert_error(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]


# --- the API key ---------------------------------------------------------------------------------

def test_api_key_no_key_wrong_key_right_key():
    c, ran = client(SecurityConfig(api_key=KEY))
    r = c.post("/v1/echo", json={"a": 1})
    assert_error(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer" and "needs an API key" in r.json()["error"]["message"]
    for bad in ({"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY}"},
                {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"},
                {"Authorization": "Bearer \xe9".encode("latin-1")}):
        r = c.post("/v1/echo", json={"a": 1}, headers=bad)
        assert_error(r, 401, "invalid_api_key")
        assert "wrong" in r.json()["error"]["message"]
    assert ran == []
    r = c.post("/v1/echo", json={"a": 1}, headers=auth())
    assert r.status_code == 200 and ran == ["echo"]
    assert c.post("/v1/echo", json={}, headers={"Authorization": f"bearer  {KEY} "}).status_code == 200


def test_health_and_pages_stay_open_with_a_key():
    c, ran = client(SecurityConfig(api_key=KEY))
    assert c.get("/health").status_code == 200 and ran == ["health"]


def test_no_key_configured_means_open():
    c, _ = client(SecurityConfig())
    assert c.post("/v1/echo", json={"a": 1}).status_code == 200


# --- Host header on a loopback bind (DNS rebinding) ----------------------------------------------

@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:1", "[::1]:8000",
                                  "LOCALHOST:80", "127.5.6.7"])
def test_loopback_host_names_pass(host):
    c, ran = client(SecurityConfig(), host=host)
    assert c.get("/health").status_code == 200 and ran == ["health"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "192.168.1.5", "127.0.0.1.evil.example",
                                  "[::2]:80", "localhost.evil.example"])
def test_foreign_host_on_loopback_bind_gets_400(host):
    c, ran = client(SecurityConfig(), host=host)
    r = c.get("/health")
    assert_error(r, 400, "bad_host")
    assert ran == []


def test_foreign_host_is_fine_on_a_public_bind():
    c, _ = client(SecurityConfig(bind_host="0.0.0.0", api_key=KEY), host="my.server.example")
    assert c.get("/health").status_code == 200


# --- JSON only ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x",
                                   "application/jsonx", None])
def test_posts_must_be_json(ctype):
    c, ran = client(SecurityConfig())
    headers = {} if ctype is None else {"Content-Type": ctype}
    r = c.post("/v1/echo", content=b'{"a": 1}', headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert ran == []


def test_json_with_charset_passes():
    c, _ = client(SecurityConfig())
    r = c.post("/v1/echo", content=b'{"a": 1}', headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200 and r.json()["n"] == 8


# --- cross-origin requests ------------------------------------------------------------------------

def test_cross_origin_text_plain_post_is_refused_and_runs_nothing():
    """What a form or fetch() on a foreign web page would send: text/plain, its own Origin."""
    c, ran = client(SecurityConfig())
    r = c.post("/v1/echo", content=b'{"prompt": "hi"}',
               headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert r.status_code in (403, 415) and r.json()["error"]
    # even as JSON (a page cannot send that without a preflight, but a rule must not rely on it)
    r = c.post("/v1/echo", json={"prompt": "hi"}, headers={"Origin": "http://evil.example"})
    assert_error(r, 403, "cross_origin")
    r = c.post("/v1/echo", json={"prompt": "hi"}, headers={"Origin": "null"})
    assert_error(r, 403, "cross_origin")
    assert ran == []


def test_same_origin_page_may_post():
    c, ran = client(SecurityConfig(), host="127.0.0.1:8000")
    r = c.post("/v1/echo", json={"a": 1}, headers={"Origin": "http://127.0.0.1:8000"})
    assert r.status_code == 200 and ran == ["echo"]
    # same name, other port: another origin
    assert_error(c.post("/v1/echo", json={}, headers={"Origin": "http://127.0.0.1:9999"}), 403, "cross_origin")


def test_same_origin_rules():
    assert _same_origin("http://localhost:8000", "localhost:8000")
    assert _same_origin("http://localhost", "localhost:80")
    assert _same_origin("http://[::1]:8000", "[::1]:8000")
    assert _same_origin("https://chat.example", "chat.example")  # behind a TLS proxy: the scheme differs
    assert not _same_origin("https://chat.example", "chat.example:80")
    assert not _same_origin("http://localhost:8001", "localhost:8000")
    assert not _same_origin("http://localhost.evil.example:8000", "localhost:8000")
    assert not _same_origin("http://localhost:8000", None)
    assert not _same_origin("http://x:99999999", "x:99999999")
    assert not _same_origin("null", "localhost:8000")
    assert not _same_origin("file://", "localhost:8000")
    assert not _same_origin("http://localhost:8000", "localhost:abc")


def test_cors_off_by_default_no_headers():
    c, _ = client(SecurityConfig())
    r = c.get("/health", headers={"Origin": "http://127.0.0.1:8000"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = c.options("/v1/echo", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert_error(r, 403, "cross_origin")


def test_cors_preflight_and_headers_for_an_allowed_origin():
    c, ran = client(SecurityConfig(api_key=KEY, cors_origins=("https://app.example",)))
    pre = c.options("/v1/echo", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    r = c.post("/v1/echo", json={"a": 1}, headers={**auth(), "Origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    # a refusal carries the CORS headers too, so the page can read the 401
    r = c.post("/v1/echo", json={"a": 1}, headers={**auth("nope"), "Origin": "https://app.example"})
    assert_error(r, 401, "invalid_api_key")
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    # another origin still refused, preflight included
    r = c.options("/v1/echo", headers={"Origin": "https://other.example", "Access-Control-Request-Method": "POST"})
    assert_error(r, 403, "cross_origin")
    assert ran == ["echo"]


# --- body size ------------------------------------------------------------------------------------

def test_body_over_the_limit_by_content_length_gets_413():
    c, ran = client(SecurityConfig(max_body_bytes=100))
    r = c.post("/v1/echo", content=b'{"p": "' + b"x" * 200 + b'"}', headers=JSON)
    assert_error(r, 413, "body_too_large")
    assert "100 bytes" in r.json()["error"]["message"] and ran == []
    assert c.post("/v1/echo", content=b'{"p": "' + b"x" * 80 + b'"}', headers=JSON).status_code == 200


def test_any_method_with_a_body_over_the_limit_gets_413():
    c, ran = client(SecurityConfig(max_body_bytes=100))
    r = c.request("GET", "/health", content=b"x" * 200)
    assert_error(r, 413, "body_too_large")
    assert ran == []


def test_chunked_body_is_counted_as_it_streams():
    c, ran = client(SecurityConfig(max_body_bytes=100))

    def chunks(n: int):
        for _ in range(n):
            yield b"x" * 30

    r = c.post("/v1/echo", content=chunks(5), headers=JSON)  # no Content-Length: chunked
    assert_error(r, 413, "body_too_large")
    assert ran == []
    r = c.post("/v1/echo", content=chunks(3), headers=JSON)
    assert r.status_code == 200 and r.json()["n"] == 90 and ran == ["echo"]


def test_bad_max_body_bytes_is_refused():
    with pytest.raises(ValueError, match="max_body_bytes"):
        small_app(SecurityConfig(max_body_bytes=0))


# --- the bind warning -----------------------------------------------------------------------------

def test_bind_warning():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert bind_warning(host, None) is None
    assert bind_warning("0.0.0.0", KEY) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "myhost.example"):
        line = bind_warning(host, None)
        assert line is not None and host in line and "--api-key" in line and "\n" not in line
    assert is_loopback("[::1]") and not is_loopback("")


# --- on the real app (create_app on the tiny trained model) -----------------------------------------

@pytest.fixture
def guarded(serve_model):
    """(TestClient, Engine): create_app with a key and one allowed CORS origin, on a loopback bind."""
    from attnlab.serve.app import create_app
    from attnlab.serve.batcher import BatchConfig
    from attnlab.serve.engine import Engine

    model, tok, device = serve_model
    engine = Engine(model, tok, device, "tiny", max_tokens_cap=4, batch=BatchConfig(max_batch=4, gather_ms=1))
    from attnlab.viz.explorer import Explorer

    app = create_app(engine, explorer=Explorer(model, tok, name="tiny"),
                     security=SecurityConfig(api_key=KEY, cors_origins=("https://app.example",)))
    with TestClient(app, base_url="http://localhost:8000") as c:
        yield c, engine
    assert engine.close(5)


BODY = {"prompt": "ROMEO:", "max_tokens": 2, "temperature": 0}


def test_app_key_wrong_none_right(guarded):
    c, engine = guarded
    assert_error(c.post("/v1/completions", json=BODY, headers={"Authorization": "Bearer sk-wrong"}), 401,
                 "invalid_api_key")
    r = c.post("/v1/completions", json=BODY)
    assert_error(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(c.get("/v1/models"), 401, "invalid_api_key")
    assert engine.stats()["served"] == 0
    r = c.post("/v1/completions", json=BODY, headers=auth())
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert engine.stats()["served"] == 1
    assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200  # open


def test_app_explorer_api_needs_the_key_its_page_does_not(guarded):
    c, _ = guarded
    assert c.get("/explorer").status_code == 200 and c.get("/").status_code == 200  # pages: open
    assert_error(c.get("/explorer/api/info"), 401, "invalid_api_key")
    assert_error(c.post("/explorer/api/attention", json={"text": "ROMEO:"}), 401, "invalid_api_key")
    r = c.post("/explorer/api/attention", json={"text": "ROMEO:"}, headers=auth())
    assert r.status_code == 200 and r.json()["tokens"]


def test_app_cross_origin_text_plain_post_is_refused_and_generates_nothing(guarded):
    c, engine = guarded
    evil = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    for headers in (evil, {**evil, "Authorization": f"Bearer {KEY}"},
                    {"Content-Type": "text/plain", "Authorization": f"Bearer {KEY}"}):
        r = c.post("/v1/completions", content=json.dumps(BODY).encode(), headers=headers)
        assert r.status_code in (403, 415), r.text
        assert r.json()["error"]["code"] in ("cross_origin", "unsupported_media_type")
    assert engine.stats()["served"] == 0 and engine.stats()["failed"] == 0


def test_app_foreign_host_on_loopback_gets_400(guarded):
    c, engine = guarded
    r = c.post("/v1/completions", json=BODY, headers={**auth(), "Host": "attacker.example:8000"})
    assert_error(r, 400, "bad_host")
    assert engine.stats()["served"] == 0


def test_app_cors_preflight_for_an_allowed_origin(guarded):
    c, engine = guarded
    pre = c.options("/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
    r = c.post("/v1/completions", json=BODY, headers={**auth(), "Origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = c.options("/v1/completions",
                  headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert_error(r, 403, "cross_origin")


def test_the_stdlib_client_sends_the_key_over_real_http():
    from attnlab.serve.client import request
    from attnlab.serve.runner import ServeConfig, start_in_thread

    app, ran = small_app(SecurityConfig(api_key=KEY))
    running = start_in_thread(app, ServeConfig(port=0, access_log=False))
    try:
        status, body = request(running.url, "/v1/echo", {"a": 1})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert request(running.url, "/v1/echo", {"a": 1}, api_key=KEY) == (200, {"n": 8, "head": '{"a": 1}'})
        assert ran == ["echo"]
    finally:
        running.stop()
