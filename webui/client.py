"""A small client for the fishtts HTTP API (server/): every call has a timeout, every failure is a
`ClientError` carrying a locale key and its fields, never a traceback.

Only `requests`; the UI never imports the engine, so it runs on machines without torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import requests
from urllib3.exceptions import LocationValueError

SHORT_TIMEOUT = 30.0  # health, lists, g2p, voices
LONG_TIMEOUT = 900.0  # loading a model or synthesizing on a CPU can take minutes
CONNECT_TIMEOUT = 5.0
MAX_MESSAGE = 300
DEFAULT_SAMPLE_RATE = 22050  # a server too old to say X-Sample-Rate sends Fish Speech v0.2's rate


class ClientError(Exception):
    """A failure to show to users: `key` is a locale key, `fields` fill its placeholders."""

    def __init__(self, key: str, status: int | None = None, **fields):
        super().__init__(key, fields)
        self.key, self.status, self.fields = key, status, {"status": status, **fields}


@dataclass
class Audio:
    data: bytes
    content_type: str


class PCMStream:
    """A streamed synthesis: its sample rate (the server's X-Sample-Rate), then its PCM bytes."""

    def __init__(self, response: requests.Response, base_url: str):
        self.response, self.base_url = response, base_url
        try:
            self.sample_rate = int(response.headers.get("x-sample-rate", DEFAULT_SAMPLE_RATE))
        except ValueError:
            self.sample_rate = DEFAULT_SAMPLE_RATE

    def __iter__(self) -> Iterator[bytes]:
        with self.response:
            try:
                yield from self.response.iter_content(chunk_size=None)
            except requests.exceptions.RequestException:
                raise ClientError("error.stream_broken", url=self.base_url) from None


@dataclass
class ApiClient:
    base_url: str
    api_key: str | None = None
    timeout: float = SHORT_TIMEOUT
    long_timeout: float = LONG_TIMEOUT
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self):
        self.base_url = (self.base_url or "").strip().rstrip("/")
        try:
            parts = urlsplit(self.base_url)
            _ = parts.port  # (raises for a port that is no number or out of range)
        except ValueError:  # e.g. "http://[::1" or "http://host:99999"
            raise ClientError("error.bad_url", url=self.base_url) from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientError("error.bad_url", url=self.base_url)
        key = (self.api_key or "").strip()
        if key:
            # A header carries printable ASCII only (a key typed with a Chinese input method left on would not go)
            if not (key.isascii() and key.isprintable()):
                raise ClientError("error.bad_key")
            self.session.headers["Authorization"] = f"Bearer {key}"

    # -- routes ---------------------------------------------------------------------------------

    def health(self) -> dict:
        """The server's state; a 503 (a failed load or model) carries it too."""
        return self._json("GET", "/v1/health", accept=(503,))

    def list_models(self) -> list[dict]:
        return self._json("GET", "/v1/models").get("details", [])

    def load_model(self, name: str, body: dict) -> dict:
        return self._json("PUT", f"/v1/models/{quote(name, safe='')}", json=body, timeout=self.long_timeout)

    def invoke(
        self, name: str, fields: dict, reference_audio: bytes | None = None, reference_filename: str = "reference.wav"
    ) -> Audio:
        """Synthesize; with a reference clip the body goes as multipart (no base64 inflation)."""
        response = self._invoke(name, fields, reference_audio, reference_filename, stream=False)
        return Audio(response.content, response.headers.get("content-type", "application/octet-stream"))

    def invoke_stream(
        self, name: str, fields: dict, reference_audio: bytes | None = None, reference_filename: str = "reference.wav"
    ) -> PCMStream:
        """Synthesize with `streaming: true`: raw 16-bit mono PCM at the model's rate, as it arrives
        (errors before the first byte are ClientErrors like invoke's; later ones end the stream)."""
        fields = {**fields, "streaming": True, "format": "pcm"}
        response = self._invoke(name, fields, reference_audio, reference_filename, stream=True)
        return PCMStream(response, self.base_url)

    def _invoke(
        self, name: str, fields: dict, reference_audio: bytes | None, reference_filename: str, stream: bool
    ) -> requests.Response:
        path, timeout = f"/v1/models/{quote(name, safe='')}/invoke", self.long_timeout
        if reference_audio is None:
            return self._request("POST", path, json=fields, timeout=timeout, stream=stream)
        form = {k: _form_value(v) for k, v in fields.items() if v is not None}
        files = {"reference_audio": (reference_filename, reference_audio, "application/octet-stream")}
        return self._request("POST", path, data=form, files=files, timeout=timeout, stream=stream)

    def preview(self, fields: dict) -> list[dict]:
        """The pieces the engine reads for an invoke body's text, as the server's front end reads them."""
        keys = ("text", "order", "reference_text", "use_g2p", "speaker")
        body = {k: fields[k] for k in keys if fields.get(k) is not None}
        return self._json("POST", "/v1/text/g2p", json=body).get("prompts", [])

    def defaults(self) -> dict[str, dict]:
        """The API's own defaults, by body: "invoke" (sampling, order), "llama" and "vqgan" (model files),
        "s1" (the S1-mini folder)."""
        spec = self._json("GET", "/openapi.json")
        invoke = spec["paths"]["/v1/models/{name}/invoke"]["post"]["requestBody"]["content"]["application/json"]
        schemas = spec.get("components", {}).get("schemas", {})

        def of(schema: dict) -> dict:
            return {k: v["default"] for k, v in schema.get("properties", {}).items() if "default" in v}

        def examples(schema: dict) -> dict:
            return {k: v["examples"][0] for k, v in schema.get("properties", {}).items() if v.get("examples")}

        return {
            "invoke": of(invoke["schema"]),
            "llama": of(schemas.get("LlamaSpec", {})),
            "vqgan": of(schemas.get("VQGANSpec", {})),
            "s1": examples(schemas.get("S1Spec", {})),  # its folder is required: the schema gives an example
        }

    def list_voices(self) -> list[dict]:
        return self._json("GET", "/v1/references").get("references", [])

    def get_voice_audio(self, voice_id: str) -> bytes:
        return self._request("GET", f"/v1/references/{quote(voice_id)}/audio").content

    def create_voice(
        self, name: str, transcript: str, audio: bytes, filename: str = "reference.wav", model: str = "default"
    ) -> dict:
        form = {"name": name, "transcript": transcript, "model": model}
        files = {"audio": (filename, audio, "application/octet-stream")}
        return self._json("POST", "/v1/references", data=form, files=files, timeout=self.long_timeout)

    def delete_voice(self, voice_id: str) -> dict:
        return self._json("DELETE", f"/v1/references/{quote(voice_id)}")

    # -- plumbing -------------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs) -> dict:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise ClientError("error.bad_response", response.status_code) from None
        if not isinstance(body, dict):
            raise ClientError("error.bad_response", response.status_code)
        return body

    def _request(
        self, method: str, path: str, timeout: float | None = None, accept: tuple[int, ...] = (), **kwargs
    ) -> requests.Response:
        read_timeout = timeout or self.timeout
        try:
            response = self.session.request(
                method, self.base_url + path, timeout=(CONNECT_TIMEOUT, read_timeout), **kwargs
            )
        except requests.exceptions.Timeout:
            raise ClientError("error.timeout", seconds=int(read_timeout)) from None
        except requests.exceptions.ConnectionError as exc:
            # Refused (nothing listens) vs. accepted and then closed unanswered (a server that crashed or restarted)
            dropped = "Connection aborted" in str(exc) or "RemoteDisconnected" in repr(exc)
            raise ClientError("error.connection_lost" if dropped else "error.unreachable", url=self.base_url) from None
        except (requests.exceptions.InvalidURL, LocationValueError):
            # A host no name can be (an empty label, "my..server", or one over 63 characters): urllib3 finds
            # it only when connecting, and raises its own error, not a requests one
            raise ClientError("error.bad_url", url=self.base_url) from None
        except requests.exceptions.RequestException:
            raise ClientError("error.unreachable", url=self.base_url) from None
        if response.status_code >= 400 and response.status_code not in accept:
            raise error_from_response(response)
        return response


def error_from_response(response: requests.Response) -> ClientError:
    """The server's `{"statusCode", "message", "error"}` (or OpenAI's shape) as one short line."""
    status = response.status_code
    if status == 401:
        return ClientError("error.unauthorized", status)
    try:
        body = response.json()
    except ValueError:
        body = None
    message = None
    if isinstance(body, dict):
        message = body.get("message")
        if message is None and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        if message is None and isinstance(body.get("detail"), str):
            message = body["detail"]
    if not isinstance(message, str) or not message.strip():
        message = response.reason or f"HTTP {status}"
    return ClientError("error.server", status, message=_one_line(message))


def _one_line(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def _form_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
