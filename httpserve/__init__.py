"""HTTP serving shared by the server's admin API and the ENC (neither imports the other).

``RequestDeadline`` is uvicorn's h11 protocol with a deadline on every request: its
line, headers and body must arrive within ``REQUEST_TIMEOUT_S`` (uvicorn itself waits
for them forever, so a few hundred half-sent requests hold the listener).
"""

from ._deadline import REQUEST_TIMEOUT_S, RequestDeadline, request_deadline

__all__ = ["REQUEST_TIMEOUT_S", "RequestDeadline", "request_deadline"]
