"""The read side: HTTP query endpoints over the MongoDB read model (docs/architecture.md
§7)."""

from app.queries.routes import QueryContext, routes
from app.queries.waiting import MongoPositionWaiter, Waiter

__all__ = ["MongoPositionWaiter", "QueryContext", "Waiter", "routes"]
