"""The HTTP policy shared by every request, gathered under one name.

Each part has its own module, which is where new code should import from:

- :mod:`ecephys_dl.retry`: what is transient, how long to wait, the retry loop
  (:class:`RetryPolicy`, :class:`RetryNotice`, :func:`is_transient`, :func:`retrying`,
  :func:`call_with_retries`, :func:`raise_for_status`, :func:`describe`, :func:`tls_refused`);
- :mod:`ecephys_dl.bodies`: whole bodies read with a bound on bytes and time
  (:func:`read_body`, :func:`content_length`);
- :mod:`ecephys_dl.redirects`: host pinning and the redirects that may be followed
  (:func:`normalize_hosts`, :func:`host_allowed`, :func:`check_redirect`, :func:`send_following`);
- :mod:`ecephys_dl.client`: the httpx client itself (:func:`make_client`, :data:`USER_AGENT`);
- :class:`~ecephys_dl.errors.TransientError` lives with the other errors.

This module re-exports all of them
so that ``from ecephys_dl.http import ...`` keeps working.
"""

from __future__ import annotations

from ecephys_dl.bodies import content_length, read_body
from ecephys_dl.client import USER_AGENT, make_client
from ecephys_dl.errors import TransientError
from ecephys_dl.redirects import MAX_REDIRECTS, REDIRECT_STATUSES, check_redirect, host_allowed, normalize_hosts, send_following
from ecephys_dl.retry import (
    TLS_HINT,
    TRANSIENT_STATUSES,
    RetryNotice,
    RetryPolicy,
    call_with_retries,
    describe,
    is_transient,
    raise_for_status,
    retry_after_seconds,
    retrying,
    tls_refused,
)

__all__ = [
    "MAX_REDIRECTS",
    "REDIRECT_STATUSES",
    "TLS_HINT",
    "TRANSIENT_STATUSES",
    "USER_AGENT",
    "RetryNotice",
    "RetryPolicy",
    "TransientError",
    "call_with_retries",
    "check_redirect",
    "content_length",
    "describe",
    "host_allowed",
    "is_transient",
    "make_client",
    "normalize_hosts",
    "raise_for_status",
    "read_body",
    "retry_after_seconds",
    "retrying",
    "send_following",
    "tls_refused",
]
