"""The security layer: who is asking (``identity``), from which page (``origins``),
how often and how much (``ratelimit``, ``limits``), one-time tickets for
browsers (``tickets``) and keeping secrets out of logs (``redaction``).

:mod:`.guard` puts them together from ready ports: the composition root
(``wiring.py``) builds the ticket store and the rate limiters and collects the
transports' ticket paths; ``app.py`` wires the guard into the ``identify``
middleware and hands its gate and connection hooks to the transports. Nothing here
reads a URL or the environment to choose an implementation. See
``docs/security.md`` for the threat model.
"""

from __future__ import annotations

from .guard import Security

__all__ = ["Security"]
