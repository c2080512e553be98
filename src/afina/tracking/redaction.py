"""Credentials hidden before anything is printed or written: passwords in URLs, secret-named fields and pairs."""

from __future__ import annotations

import re
from typing import Any

# A URL inside any text: scheme://... up to whitespace, a quote or a bracket.
_URL = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>`]+""")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;][^=&#\s]*(?:passw|pwd|token|secret|api_?key|apikey|credential|signature|sig\b|auth)[^=&#\s]*=)[^&#\s]*"
)
_SECRET_PAIR = re.compile(r"(?i)\b((?:password|passwd|pwd|api_?key|token|secret)\s*=\s*)(?!\*\*\*)[^\s&;,'\")]+")


def redact(text: str) -> str:
    """Hide credentials in any text before it is printed or written: the password of every URL in it
    (database URLs and HTTP ones alike, including passwords with / or @ and `http://:token@host`),
    secret-named query parameters (?password=, ?token=, ?api_key=, ...) and `password=...` pairs."""
    if not isinstance(text, str) or ("://" not in text and "=" not in text):
        return text
    return _SECRET_PAIR.sub(r"\1***", _URL.sub(lambda m: _redact_url(m.group(0)), text))


def _redact_url(url: str) -> str:
    """One URL. The user info ends at the LAST @ before the query: hosts never contain @, while raw
    passwords may (SQLAlchemy's make_url and urlsplit both split at the first one, or at a /, and leak the rest)."""
    scheme, _, rest = url.partition("://")
    head, sep, query = rest.partition("?")
    at = head.rfind("@")
    if at >= 0:
        user, colon, _ = head[:at].partition(":")
        head = f"{user}:***@{head[at + 1 :]}" if colon else head
    query = _SECRET_QUERY.sub(r"\1***", "?" + query)[1:] if sep else query
    return f"{scheme}://{head}{sep}{query}"


SECRET_KEY = re.compile(r"token|passw|secret|api_?key|credential", re.I)


def mask(key: str, value: Any) -> Any:
    """A secret-named field's value becomes ***; passwords inside URLs are hidden everywhere."""
    if SECRET_KEY.search(key) and value not in (None, ""):
        return "***"
    return redact(value) if isinstance(value, str) else value


def scrub(value: Any, key: str = "") -> Any:
    """A nested structure with secret-named values masked and every string redacted."""
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, key) for v in value]
    return mask(key, value)
