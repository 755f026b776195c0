"""Access control over real HTTP: API key (set through FISHTTS_API_KEY), CORS, cross-site requests,
the Host check against DNS rebinding, ambiguous Authorization headers."""

from __future__ import annotations

import http.client
import json

import openai
import pytest
import requests

from server.settings import Settings
from tests.server.helpers import FAST, assert_json_error

KEY = "s3cret-key"
UI_ORIGIN = "http://ui.example:7860"


SERVER_ARGS = ("--cors-origins", UI_ORIGIN, "--allowed-hosts", "tts.example")
SERVER_ENV = {"FISHTTS_API_KEY": KEY}


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_defaults_are_loopback_no_key_no_cors_no_downloads():
    settings = Settings()
    assert settings.host_port == ("127.0.0.1", 8000)
    assert settings.api_key is None and settings.allowed_origins == [] and not settings.allow_downloads
    assert not settings.compile


def test_health_and_docs_need_no_key(server):
    for path in ("/v1/health", "/docs", "/openapi.json"):
        assert requests.get(server.url + path).status_code == 200, path


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/models"),
        ("PUT", "/v1/models/default"),
        ("DELETE", "/v1/models/default"),
        ("POST", "/v1/models/default/invoke"),
        ("GET", "/v1/references"),
        ("POST", "/v1/text/g2p"),
    ],
)
def test_routes_need_the_key(server, method, path):
    for headers in ({}, auth("wrong-key"), {"Authorization": KEY}):
        response = requests.request(method, server.url + path, headers=headers, json={})
        assert_json_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_key_opens_them(server):
    assert requests.get(server.url + "/v1/models", headers=auth()).json()["models"] == ["default"]
    response = requests.post(server.url + "/v1/models/default/invoke", headers=auth(), json={"text": "hi", **FAST})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"


def test_openai_client_with_wrong_key_gets_openai_401(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.audio.speech.create(model="tts-1", voice="anyone", input="hi")
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "authentication_error"


def test_cors_only_for_configured_origins(server):
    preflight = {
        "Access-Control-Request-Method": "POST",
        # (the OpenAI SDKs' own headers too: their preflight was refused)
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-lang,x-stainless-os",
    }
    allowed = requests.options(server.url + "/v1/models/default/invoke", headers={"Origin": UI_ORIGIN, **preflight})
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    other = requests.options(
        server.url + "/v1/models/default/invoke", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers


def test_cross_site_posts_are_refused(server):
    """A web page can send a form POST without a preflight; its foreign Origin gets 403."""
    form = {"text": "hi", "max_new_tokens": "8"}
    evil = requests.post(
        server.url + "/v1/models/default/invoke", data=form, headers={"Origin": "https://evil.example", **auth()}
    )
    assert_json_error(evil, 403)
    evil_delete = requests.delete(
        server.url + "/v1/models/default", headers={"Origin": "https://evil.example", **auth()}
    )
    assert_json_error(evil_delete, 403)
    friendly = requests.post(
        server.url + "/v1/models/default/invoke", data=form, headers={"Origin": UI_ORIGIN, **auth()}
    )
    assert friendly.status_code == 200, friendly.text
    assert friendly.headers["access-control-allow-origin"] == UI_ORIGIN
    exposed = {h.strip().lower() for h in friendly.headers["access-control-expose-headers"].split(",")}
    assert "x-sample-rate" in exposed  # (a page playing raw pcm reads its rate there)


@pytest.mark.parametrize("origin", ["http://[", "http://[zz]"])
def test_a_malformed_origin_is_refused_like_a_foreign_one(server, origin):
    response = requests.post(server.url + "/v1/text/g2p", json={"text": "hi"}, headers={"Origin": origin, **auth()})
    assert_json_error(response, 403)


def raw_request(server, method: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, dict]:
    """A request with exactly these headers, repeats included (requests folds them into one)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_a_rebinding_host_is_refused(server):
    """A page on a name re-pointed at 127.0.0.1 sends its own name as Host (and as Origin): refused, so
    it cannot list, use or delete voices, even though Origin == Host looks same-origin."""
    rebound = f"rebind.example:{server.port}"
    headers = {"Host": rebound, "Origin": f"http://{rebound}", **auth()}
    assert_json_error(requests.delete(server.url + "/v1/references/me", headers=headers, timeout=30), 400)
    assert_json_error(requests.get(server.url + "/v1/references", headers=headers, timeout=30), 400)
    body = assert_json_error(
        requests.post(
            server.url + "/v1/models/default/invoke", headers=headers, json={"text": "hi", **FAST}, timeout=30
        ),
        400,
    )
    assert "--allowed-hosts" in body["message"]
    for host in (
        f"127.0.0.1:{server.port}",
        f"localhost:{server.port}",
        "[::1]",
        f"tts.example:{server.port}",
        "app.localhost",
    ):
        response = requests.get(server.url + "/v1/references", headers={"Host": host, **auth()}, timeout=30)
        assert response.status_code == 200, (host, response.text)


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {KEY}")],
        [("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {KEY}")],
        [("Authorization", f"Bearer wrong, Bearer {KEY}")],
        [("Authorization", f"Bearer {KEY} {KEY}")],
    ],
    ids=["wrong-then-right", "right-twice", "two-tokens-comma", "two-tokens-space"],
)
def test_an_ambiguous_authorization_is_a_400(server, headers):
    status, body = raw_request(server, "GET", "/v1/models", [("Host", "127.0.0.1"), *headers])
    assert status == 400 and body["statusCode"] == 400 and "one token" in body["message"], body


def test_one_authorization_header_still_works(server):
    assert raw_request(server, "GET", "/v1/models", [("Host", "127.0.0.1"), *auth().items()])[0] == 200
