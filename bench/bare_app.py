"""The read ceiling: a bare Starlette endpoint doing the same `find_one` as GET /orders/{id}.

No waiting, no typing of parameters, no body model, no middleware: the least an HTTP read of
one order document can cost with the same stack. Served like `python -m app serve` (uvloop,
httptools, no access log). Run: `python -m bench.bare_app` with MONGO_URL, MONGO_DB, PORT.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import uvicorn
from pymongo import AsyncMongoClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(mongo_url: str, mongo_db: str) -> Starlette:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    orders = mongo[mongo_db]["orders"]

    async def get_order(request: Request) -> Response:
        found = await orders.find_one({"_id": request.path_params["order_id"]})
        if found is None:
            return Response(status_code=404)
        return Response(msgspec.json.encode(found), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await mongo.close()

    return Starlette(routes=[Route("/orders/{order_id}", get_order)], lifespan=lifespan)


def main() -> None:
    uvicorn.run(
        create_app(os.environ["MONGO_URL"], os.environ["MONGO_DB"]),
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
