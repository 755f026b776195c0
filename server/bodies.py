"""Bodies that come as JSON or as multipart/form-data (uploads as file parts), or as msgpack for the
models that say so (`MSGPACK`: the original fish-speech client's encoding), validated alike.

FastAPI binds one body type per route, so the routes that take uploads read the request here and
validate it with the same pydantic model; a failure raises FastAPI's own validation error, which
the error handlers turn into the documented 422.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from typing import TypeVar
from urllib.parse import parse_qsl

import msgpack
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .errors import ApiError
from .schemas import check_text_length

T = TypeVar("T", bound=BaseModel)

JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


async def read_body(request: Request, model: type[T], max_text_length: int) -> tuple[T, dict[str, bytes]]:
    """The validated body and the raw bytes of any uploaded files among the model's `FILE_FIELDS`."""
    file_fields = model.FILE_FIELDS
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    files: dict[str, bytes] = {}
    if content_type in JSON_TYPES or content_type.endswith("+json"):
        raw = await request.body()
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ApiError(400, "The JSON body is nested too deeply.", code="json_invalid") from None
        except ValueError as exc:  # malformed, not UTF-8, or an integer of more than 4,300 digits
            too_long = "digits" in str(exc)
            message = "An integer in the JSON body has too many digits." if too_long else "Malformed JSON body."
            raise ApiError(400, message, code="json_invalid") from None
        if not isinstance(data, dict):
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "Input should be a JSON object", "type": "model_attributes_type"}]
            )
    elif content_type in FORM_TYPES:
        data = {}
        raw = await request.body()  # (the form is parsed from it; BodyLimitsMiddleware bounds it)
        charset = _declared_charset(request.headers.get("content-type", ""))
        if content_type == "application/x-www-form-urlencoded":
            items = _urlencoded_items(raw, charset)
        else:
            # (a field may be as large as the body may be: a clip in base64)
            form = await request.form(max_files=len(file_fields) or 1, max_fields=MAX_FORM_FIELDS, max_part_size=2**31)
            items = form.multi_items()
            _check_utf8_fields(items, raw, charset)
        for key, value in items:
            if isinstance(value, UploadFile):
                if key not in file_fields:
                    allowed = ", ".join(file_fields) or "none"
                    raise ValueError(f"{key}: unexpected file part (files go in {allowed}).")
                files[key] = await value.read()
            elif value != "" or _given_when_empty(model, key):  # an empty form field means "not given"
                data[key] = value
        if twice := sorted(files.keys() & data.keys()):
            raise ValueError(f"{twice[0]}: given twice (a file part and a field); send one of them.")
    elif content_type in MSGPACK_TYPES and getattr(model, "MSGPACK", False):
        data = unpack_msgpack(await request.body())
    else:
        kinds = "application/json, application/msgpack" if getattr(model, "MSGPACK", False) else "application/json"
        raise ApiError(415, f"Send the body as {kinds} or multipart/form-data.", code="unsupported_media_type")
    try:
        # a file part stands in for its field while the body is checked, so that rules across fields (at most
        # one reference) see it; the route reads it from `files`
        body = model.model_validate({**data, **dict.fromkeys(files, FILE_PART)})
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    for key in files:
        setattr(body, key, None)
    check_text_length(body, max_text_length)
    return body, files


FILE_PART = "(a file part)"
MAX_FORM_FIELDS = 64


_CHARSET = re.compile(r";\s*charset=\"?([^\";\s]+)", re.IGNORECASE)


def _declared_charset(content_type: str) -> str | None:
    """The codec a form body names (`; charset=...`), "utf-8" where it names none, None for one Python lacks."""
    named = _CHARSET.search(content_type)
    try:
        return codecs.lookup(named[1]).name if named else "utf-8"
    except LookupError:
        return None


def _not_text(key: str, charset: str = "utf-8") -> ValueError:
    return ValueError(f"{key}: not valid {charset} text (send form fields as UTF-8).")


def _check_utf8_fields(items: list[tuple[str, str | UploadFile]], raw: bytes, charset: str | None) -> None:
    """ValueError (422) for a multipart text field whose bytes are not UTF-8 (unless the body names another
    charset). Starlette reads such a field as Latin-1: a voice's transcript sent in Latin-1 or in a broken
    encoding was saved garbled, with a 201. A field read as UTF-8 is in the body as its UTF-8 bytes; one
    read as Latin-1 (and not ASCII) is not."""
    if charset != "utf-8":
        return
    for key, value in items:
        if isinstance(value, str) and not value.isascii() and value.encode() not in raw:
            raise _not_text(key)


def _urlencoded_items(raw: bytes, charset: str | None) -> list[tuple[str, str]]:
    """The fields of a urlencoded body, read strictly in its charset (UTF-8 unless it names another).
    Starlette replaced percent-escapes that are not UTF-8 with U+FFFD, which cleaning then dropped from the
    text without a word, and read raw bytes as Latin-1."""
    charset = charset or "utf-8"
    try:
        text, limit = raw.decode(charset), MAX_FORM_FIELDS
        return parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict", max_num_fields=limit)
    except UnicodeDecodeError:
        raise _not_text("body", charset) from None
    except ValueError:  # more fields than MAX_FORM_FIELDS
        raise ApiError(400, f"Too many fields. Maximum number of fields is {MAX_FORM_FIELDS}.") from None


def _given_when_empty(model: type[BaseModel], key: str) -> bool:
    """An empty form field whose default is a text of its own (`text`: the original's sample sentence) was
    given empty: "not given" would speak the default instead of refusing an empty text as JSON does."""
    field = model.model_fields.get(key)
    return field is not None and isinstance(field.default, str) and field.default != ""


def unpack_msgpack(raw: bytes) -> dict:
    """A msgpack map (strings as str, binary as bytes); 400 for anything else."""
    try:
        data = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException):  # malformed, truncated, nested too deeply, bad UTF-8
        raise ApiError(400, "Malformed msgpack body.", code="msgpack_invalid") from None
    if not isinstance(data, dict):
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "Input should be a msgpack map", "type": "model_attributes_type"}]
        )
    return data


def decode_base64(value: str, field: str) -> bytes:
    """Standard base64, with or without a `data:...;base64,` prefix; ValueError (422) if it is not."""
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field}: not valid base64.") from None
    if not data:
        raise ValueError(f"{field}: the audio is empty (0 bytes).")
    return data


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its nested models written in place: a request body's schema in
    `openapi_extra` cannot point into pydantic's `$defs`, which are not in the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if set(node) == {"$ref"} and node["$ref"].startswith("#/$defs/"):
                return resolve(defs[node["$ref"].removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def openapi_msgpack_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` documenting a body sent as JSON or msgpack (the same fields)."""
    schema = inline_schema(model)
    content = {kind: {"schema": schema} for kind in (JSON_TYPES[0], MSGPACK_TYPES[0])}
    return {"requestBody": {"required": True, "content": content}}


def openapi_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` documenting both body encodings of such a route (the model's schema inline); the
    model's REQUIRED_FILES must be given (base64 in JSON, a file part in multipart) though the model has
    them optional (either may carry them)."""
    schema = inline_schema(model)
    required = {"required": list(getattr(model, "REQUIRED_FILES", ()))} if getattr(model, "REQUIRED_FILES", ()) else {}
    json_schema = {"allOf": [schema, {"type": "object", **required}]} if required else schema
    form_schema = {
        "allOf": [
            schema,
            {
                "type": "object",
                "properties": {f: {"type": "string", "format": "binary"} for f in model.FILE_FIELDS},
                **required,
            },
        ]
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": json_schema}, "multipart/form-data": {"schema": form_schema}},
        }
    }
