"""What "a dependency failed" means in exceptions, for code that retries or reports it.

One definition, so that the relay, the projector, the readiness probe and the background tasks
agree on what is an outage (retry, back off, report) and what is a bug (let it surface).
"""

from __future__ import annotations

from typing import Final

import asyncpg

# PostgreSQL unreachable, the connection lost or timed out (TimeoutError is an OSError), or a
# statement failed on the server. Callers that must tell a refused request from an outage
# (the command endpoints) use narrower sets of their own.
POSTGRES_FAILURES: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
