"""``sluice.submit.<pipeline>``: the NATS request/reply trigger (contract §5).

A request ``{"params": {…}, "version": n?, "idempotency_key": "…"?, "reuse": bool?}`` creates a run
exactly as ``POST /pipelines/{name}/runs`` does (the same checks, the same code:
``daemon.intake.manual``) and is answered ``{"run_id": …, "created": bool, …}``, or
``{"error": {"code", "message", "details"}}`` for anything wrong — bad JSON included. No request can
end the subscription.

Requests are handled concurrently, at most ``MAX_IN_FLIGHT`` at a time; beyond that the subscription
waits (NATS holds the rest in the subscription's pending buffer). Daemons subscribe in one queue
group, so each request is handled once. A request whose reply subject is not an inbox (``_INBOX.…``)
is dropped unanswered: the daemon may publish where services may not, and must not be made to
publish a reply on a trigger's subject, an agent's, or another service's inbox by name.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS

from daemon.errors import BadRequest, SluiceError
from daemon.intake.manual import ManualRuns
from daemon.limits import Positive32, storable
from daemon.rules.params import UNSTORABLE
from daemon.runtime.refusals import Refusals
from kit.subjects import SUBMIT
from kit.tasks import TaskSet

log = structlog.get_logger(__name__)

SUBJECT = f"{SUBMIT}.*"
QUEUE_GROUP = "sluice-submit"
MAX_IN_FLIGHT = 64
MAX_IDEMPOTENCY_KEY = 255  # as the REST trigger's Idempotency-Key
STOP_TIMEOUT_S = 5.0
REPLY_PREFIX = "_INBOX."
_encoder = msgspec.json.Encoder()


class SubmitBody(msgspec.Struct, forbid_unknown_fields=True):
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    version: Positive32 | None = None
    idempotency_key: str | None = None
    reuse: bool = True


def parse_request(subject: str, data: bytes) -> tuple[str, SubmitBody]:
    """The pipeline a submit subject names and the request body.

    Raises:
        BadRequest: a subject without a pipeline, a body that is not the JSON above, a version
            below 1, an idempotency key too long.
    """
    pipeline = subject.removeprefix(f"{SUBMIT}.")
    if not pipeline or "." in pipeline or pipeline == subject:
        raise BadRequest(f"submit to {SUBMIT}.<pipeline>, not {subject}")
    try:
        body = msgspec.json.decode(data, type=SubmitBody) if data.strip() else SubmitBody()
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request is not valid JSON: {exc}") from None
    if body.idempotency_key is not None and not 0 < len(body.idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise BadRequest(f"idempotency_key must have 1 to {MAX_IDEMPOTENCY_KEY} characters")
    if body.idempotency_key is not None and storable(body.idempotency_key)[1]:
        raise BadRequest(f"idempotency_key {UNSTORABLE}")
    return pipeline, body


def error_reply(exc: SluiceError) -> bytes:
    return _encoder.encode(exc.to_json())


class Submissions:
    """The subscription and the requests in flight; :meth:`start` registers their end on a stack."""

    def __init__(self, manual: ManualRuns) -> None:
        self._manual = manual
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks = TaskSet("submit")
        self._subscription: Any = None
        self._refusals = Refusals("submit_refused_reply")

    @classmethod
    async def start(cls, stack: contextlib.AsyncExitStack, nc: NATS, manual: ManualRuns) -> Submissions:
        submissions = cls(manual)
        submissions._subscription = await nc.subscribe(SUBJECT, queue=QUEUE_GROUP, cb=submissions._receive)
        stack.push_async_callback(submissions._stop)
        log.info("submit_listening", subject=SUBJECT)
        return submissions

    async def _stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._subscription.unsubscribe()
        # Requests in flight get a bounded moment to answer, then are cancelled.
        for _ in range(int(STOP_TIMEOUT_S / 0.05)):
            if not len(self._tasks):
                break
            await asyncio.sleep(0.05)
        await self._tasks.aclose()

    async def _receive(self, msg: Any) -> None:
        await self._slots.acquire()
        try:
            self._tasks.spawn(self._handle(msg), name=f"submit:{msg.subject}")
        except RuntimeError:  # stopping
            self._slots.release()

    async def _handle(self, msg: Any) -> None:
        try:
            if msg.reply and not msg.reply.startswith(REPLY_PREFIX):
                reason = f"the reply subject is not under {REPLY_PREFIX}"
                self._refusals.refuse(msg.reply, reason, subject=msg.subject)
                return
            reply = await self.handle(msg.subject, msg.data)
            if msg.reply:
                await msg.respond(reply)
        except Exception as exc:
            log.warning("submit_reply_failed", subject=msg.subject, error=repr(exc))
        finally:
            self._slots.release()

    async def handle(self, subject: str, data: bytes) -> bytes:
        """The reply to one request; never raises for a bad request (the reply says what was wrong)."""
        try:
            pipeline, body = parse_request(subject, data)
            created = await self._manual.create(
                pipeline,
                params=body.params,
                version=body.version,
                reuse=body.reuse,
                idempotency_key=body.idempotency_key,
            )
        except SluiceError as exc:
            log.info("submit_refused", subject=subject, code=exc.code, error=exc.message)
            return error_reply(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("submit_failed", subject=subject)
            return _encoder.encode(
                {
                    "error": {
                        "code": "internal",
                        "message": "internal error; the daemon log has details",
                        "details": [],
                    }
                }
            )
        run = created.run
        log.info("run_submitted", run_id=str(run.id), pipeline=run.pipeline, created=created.created)
        return _encoder.encode(
            {
                "run_id": str(run.id),
                "created": created.created,
                "pipeline": run.pipeline,
                "version": run.version,
                "status": run.status,
            }
        )
