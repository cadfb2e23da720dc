"""The security layer: who is asking (``auth``), from which page (``origins``),
how often and how much (``ratelimit``, ``limits``), one-time tickets for
browsers (``tickets``) and keeping secrets out of logs (``redaction``).

:mod:`.guard` puts them together; ``app.py`` wires the guard into the
``identify`` middleware and the transports' hooks. See ``docs/security.md``
for the threat model.
"""

from __future__ import annotations

from .guard import Security

__all__ = ["Security"]
