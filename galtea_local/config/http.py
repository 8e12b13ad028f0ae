"""One validator for the API URL and the extra headers.

The settings (``config check``, the daemon's start) and the upstream client
both call these, so a value one accepts the other never refuses. Messages never
quote a header value or URL credentials: they may be secrets.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.galtea.ai"
# We set these ourselves; the key goes through upstream.api_key, where it stays masked.
RESERVED_HEADERS = frozenset({"authorization", "host", "content-length", "content-type", "user-agent"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
# One line of Latin-1 text, no leading or trailing blank (h11 would quote a bad value in its error).
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e\x80-\xff](?:[\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
_URL_SHAPE = 'an http:// or https:// URL with a host, like "https://api.galtea.ai"'


class HttpSettingError(ValueError):
    """A URL or header that cannot be used; the message says why without quoting secrets."""


def checked_base_url(value: Any) -> str:
    """``value`` without blanks or a trailing slash (as the official SDK does), or HttpSettingError."""
    if not isinstance(value, str):
        raise HttpSettingError(f"must be {_URL_SHAPE}, not {type(value).__name__}")
    text = value.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise HttpSettingError(f"must be {_URL_SHAPE}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise HttpSettingError(f"must be {_URL_SHAPE}")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise HttpSettingError("must not carry credentials, a query or a fragment (the key goes in upstream.api_key)")
    return text


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``****@``, for messages."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    return f"{scheme}://****@{netloc.rsplit('@', 1)[1]}{slash}{path}"


def insecure_problem(url: str, allow_insecure_http: bool) -> str | None:
    """Why ``url`` may not be used for the key, or None: plain http:// off loopback needs the opt-in."""
    parts = urlsplit(url)
    if parts.scheme != "http" or allow_insecure_http or is_loopback(parts.hostname or ""):
        return None
    return ("plain http:// would send the API key unencrypted; use https://, "
            "or set upstream.allow_insecure_http = true (loopback hosts are always allowed)")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def checked_headers(headers: Any) -> dict[str, str]:
    """The headers as a plain dict, or HttpSettingError naming the header (never its value)."""
    if not isinstance(headers, Mapping):
        raise HttpSettingError(f"must be a table of header name = string value, not {type(headers).__name__}")
    result: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            # Not echoed: a mangled name may be a pasted value.
            raise HttpSettingError("holds an invalid header name: use letters, digits and !#$%&'*+-.^_`|~")
        if name.lower() in RESERVED_HEADERS:
            raise HttpSettingError(f"header {name!r} may not be set here: galtea-local sets it itself "
                                   "(use upstream.api_key for the key)")
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise HttpSettingError(f"header {name!r} must have a one-line Latin-1 string value with no leading blank")
        if name.lower() in {known.lower() for known in result}:
            raise HttpSettingError(f"sets header {name!r} twice (names differ only in case)")
        result[name] = value
    return result
