"""Secrets out of text: URLs with their credentials masked, for logs, stored records, errors and alerts.

A URL may carry credentials in two places: its userinfo (``https://user:secret@host/``) and its
query (``?apiKey=…``, ``&signature=…``). :func:`mask_url` replaces both with ``***``, keeping the
scheme, user name, host, port and path a reader needs to tell which endpoint failed;
:func:`mask_urls` does so for every URL inside a longer text (an exception message, a log line).
"""

from __future__ import annotations

import logging
import re

#: Stands in for every masked secret.
MASK = "***"
#: Query parameters whose name contains one of these (case, ``_`` and ``-`` ignored) are secrets:
#: API keys, secrets, tokens, signatures, passwords and passphrases, in the spellings of the
#: exchanges' and the cloud providers' APIs (apiKey, api_key, X-Amz-Signature, access_token, sig).
SECRET_PARAM_WORDS = ("key", "secret", "token", "sig", "password", "passwd", "passphrase", "credential", "auth")

# A URL runs to the first character that cannot be part of one in a message: white space, quotes
# or angle brackets (a repr, an HTML error page).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# The userinfo of an authority: everything before the last "@" that comes before the path.
_USERINFO = re.compile(r"^(?P<scheme>[^:/]+://)(?P<userinfo>[^/?#]*)@")
_PARAM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")


def _secret_name(name: str) -> bool:
    plain = name.lower().replace("_", "").replace("-", "")
    return any(word in plain for word in SECRET_PARAM_WORDS)


def mask_url(url: str) -> str:
    """``url`` with its userinfo password and its secret-looking query values replaced by ``***``.

    A userinfo without a password (``https://token@host``) is masked whole: a lone user name is
    where such URLs put their token. Everything else is kept verbatim.

    Args:
        url: a URL, e.g. ``https://ops:pw@proxy:8443/api?apiKey=k&symbol=BTCUSDT``.

    Returns:
        The URL masked, e.g. ``https://ops:***@proxy:8443/api?apiKey=***&symbol=BTCUSDT``.
    """

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")  # a user name never holds a ":"
        return f"{match['scheme']}{user + colon if colon else ''}{MASK}@"

    masked = _USERINFO.sub(userinfo, url, count=1)
    head, question, query = masked.partition("?")
    if not question:
        return masked

    def param(match: re.Match[str]) -> str:
        if not _secret_name(match["name"]):
            return match[0]
        return f"{match['lead']}{match['name']}={MASK}"

    return head + _PARAM.sub(param, question + query)


def mask_urls(text: str) -> str:
    """``text`` with every URL in it masked by :func:`mask_url`; the rest is kept verbatim."""
    return _URL.sub(lambda match: mask_url(match[0]), text)


def mask_exception(exc: BaseException) -> BaseException:
    """Mask the URLs in the string arguments of ``exc`` and of every exception chained to it.

    A traceback prints each chained exception's message (``raise … from exc``, and the
    exception handled when another was raised): an HTTP client's error there names the request's
    full URL. The exceptions are changed in place, so a traceback printed later shows them masked.

    Returns:
        ``exc``.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(mask_urls(a) if isinstance(a, str) else a for a in current.args)
        todo += [current.__cause__, current.__context__]
    return exc


class MaskUrlSecrets(logging.Filter):
    """A logging filter that masks the URLs of each record's message (:func:`mask_urls`).

    Attach it to the logger that writes the records (a filter on a parent logger does not see
    its children's records), e.g. ``logging.getLogger("ccxt.base.exchange")``, which logs every
    request's full URL at DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_urls(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
