"""Secrets kept out of what Sluice prints and logs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redacted_url(url: str) -> str:
    """``url`` with the password (or a token given as the user) of its user info masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    masked = f"{user}:{MASK}" if has_password else MASK
    return urlunsplit(parts._replace(netloc=f"{masked}@{host}"))


def redacted_urls(urls: str) -> str:
    """A comma-separated list of URLs, each redacted."""
    return ",".join(redacted_url(url.strip()) for url in urls.split(",") if url.strip())
