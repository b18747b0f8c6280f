"""The one redaction path: every text that leaves the pipeline passes through `redact`.

Two layers, because a DSN that cannot be parsed can still be printed by accident:

- by shape: the whole userinfo of anything that looks like a URL (`scheme://...@`, up to
  the last `@` of the token, since an unencoded password may itself hold `@`), and the
  value of every `password=` in key/value form;
- by value: every secret this process has seen (`register_dsn` is called for each DSN a
  `Settings` holds and each one built from a secret) in each form it can be printed in:
  the password as written, percent-decoded, and its pieces between delimiters, so even a
  DSN that libpq splits at the wrong `@` (printing part of the password as the host)
  leaves nothing behind.

Sinks call `redact` (text) or `scrub` (JSON-like values: strings redacted in place, so
the structure stays valid JSON whatever the password's characters): the log formatters,
the CLI's output, the run report, the Lambda handlers' error messages.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import unquote

MASK = "***"
# Registered values shorter than this are not redacted by value (every "a" of a message
# would go); a password that short is still masked by shape in any DSN-like text.
MIN_SECRET = 4

# libpq splits a DSN at ASCII whitespace only (C isspace): a no-break space is part of an
# unquoted password, so these patterns read `\s`/`\S` as ASCII (re.ASCII) like libpq does.
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)(\S*@)", re.ASCII)
_KV_PASSWORD = re.compile(
    r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|\S+)",
    re.IGNORECASE | re.ASCII,
)
_KV_NEXT_KEY = re.compile(r"\s+[A-Za-z_]+\s*=", re.ASCII)
_DELIMITERS = re.compile(r"[@/?#:\s'\"\\=%]+")
_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")

_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None  # one alternation, longest first
_lock = threading.Lock()


def _alternation(secrets: set[str]) -> re.Pattern[str] | None:
    ordered = sorted(secrets, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def register_secret(*values: str | None) -> None:
    """Remember literal secrets (a password fetched from a secret store, an API token)."""
    global _known_pattern
    forms = {v for v in values if v and len(v) >= MIN_SECRET}
    if forms - _known:
        with _lock:
            _known.update(forms)
            _known_pattern = _alternation(_known)


def forget_secrets() -> None:
    """Forget every registered secret (tests that generate thousands of them)."""
    global _known_pattern
    with _lock:
        _known.clear()
        _known_pattern = None


def register_dsn(dsn: str | None) -> None:
    """Remember every printable form of the password in `dsn`, parsable or not."""
    if dsn:
        register_secret(*dsn_secrets(dsn))


def dsn_secrets(dsn: str) -> set[str]:
    """The password of `dsn` in every form it may appear in text (see the module doc)."""
    found: set[str] = set()
    whole: set[str] = set()
    if _URL.match(dsn):
        rest = dsn.split("://", 1)[1]
        if "@" in rest:
            userinfo = rest.rsplit("@", 1)[0]
            _, colon, password = userinfo.partition(":")
            if not colon and "@" in userinfo:  # no colon: the password went into the "user"
                password = userinfo
            if password:  # the user name alone is no secret (and is never split into pieces)
                whole.add(userinfo)
                found |= {password, _unquoted(password)}
    for match in _KV_PASSWORD.finditer(dsn):
        value = match.group(2)
        found |= {value, value.strip("'\""), _kv_unescaped(value)}
        # An unquoted value with spaces (malformed): everything up to the next `key=`.
        tail = dsn[match.start(2) :]
        cut = _KV_NEXT_KEY.search(tail)
        found.add((tail[: cut.start()] if cut else tail).strip())
    pieces = {p for f in found for p in _DELIMITERS.split(f) if len(p) >= MIN_SECRET}
    return {f for f in found | pieces | whole if f}


def _unquoted(text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return text


def _kv_unescaped(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return re.sub(r"\\(.)", r"\1", value)


def redact(text: str, *secrets: str | None) -> str:
    """`text` without passwords: by shape (URL userinfo, `password=`), then by value
    (`secrets` given here and every secret registered), longest first."""
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _KV_PASSWORD.sub(rf"\1{MASK}", text)
    extra = {s for s in secrets if s} - _known
    pattern = _alternation(_known | extra) if extra else _known_pattern
    return pattern.sub(MASK, text) if pattern is not None else text


def scrub(value: Any) -> Any:
    """A copy of a JSON-like value with every string (keys included) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value
