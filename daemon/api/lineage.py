"""Lineage: who read data at, under or around a datastore path, and which step wrote it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aiohttp import web

from daemon.api.context import POOL
from daemon.api.contract import NAME, PAGED, endpoint
from daemon.api.http import decode_cursor, json_response, limit_arg, page
from daemon.errors import BadRequest, NotFound
from daemon.rules.lineage import BadPath, clean_path, output_of
from daemon.store import lineage as lineage_store
from daemon.store.catalog import get_datastore

routes = web.RouteTableDef()

PATH: dict[str, Any] = {"type": "string", "maxLength": 4096, "description": "relative to the datastore"}


@routes.get("/api/v1/lineage")
@endpoint("read", query={"datastore": NAME, "path": PATH, **PAGED})
async def lineage(request: web.Request) -> web.Response:
    """The step runs that read data at, under or around ?path= of ?datastore= (newest first, with
    the fingerprint each saw; paged), and the step run that writes it when it is a run's output."""
    datastore = request.query.get("datastore")
    if not datastore:
        raise BadRequest("datastore is required: the name of a datastore")
    try:
        path = clean_path(request.query.get("path", ""))
    except BadPath as exc:
        raise BadRequest(f"path: {exc}") from None
    limit = limit_arg(request)
    before = decode_cursor(request, tuple[int, str])
    pool = request.app[POOL]
    if await get_datastore(pool, datastore) is None:
        raise NotFound(f"datastore {datastore} does not exist")
    readers = await lineage_store.readers(pool, datastore, path, limit=limit + 1, before=before)
    answer = page([_Reader(reader) for reader in readers], limit, key=lambda item: item.key)
    writer = await _writer(pool, datastore, path)
    return json_response({"datastore": datastore, "path": path, "writer": writer} | answer)


class _Reader:
    """A reader as the API shows it (``page`` wants ``to_json``)."""

    def __init__(self, reader: lineage_store.Reader) -> None:
        self.reader = reader
        self.key = (reader.input.step_run_id, reader.input.name)

    def to_json(self) -> dict[str, Any]:
        reader = self.reader
        return {
            "run_id": str(reader.run_id),
            "pipeline": reader.pipeline,
            "version": reader.version,
            "step": reader.step,
            "status": reader.status,
            "created_at": reader.created_at.isoformat(),
            "input": reader.input.to_json(),
        }


async def _writer(pool: Any, datastore: str, path: str) -> dict[str, Any] | None:
    """The step run whose output holds ``path``, with the one it reuses, if any."""
    where = output_of(datastore, path)
    if where is None:
        return None
    found = await lineage_store.writer(pool, UUID(where.run_id), where.step)
    if found is None or (found.outputs and where.output not in found.outputs):
        return None
    reused = None
    if found.reused_from is not None:
        run_id, step, status = found.reused_from
        reused = {"run_id": str(run_id), "step": step, "status": status}
    return {
        "run_id": str(found.run_id),
        "pipeline": found.pipeline,
        "version": found.version,
        "step": found.step,
        "output": where.output,
        "status": found.status,
        "reused_from": reused,
    }
