"""The ``nats`` source: NATS messages on a subject become events, through core NATS or JetStream.

Without ``stream`` a trigger is a core subscription: what arrives while the trigger is not
subscribed (paused, daemon down) is gone, and core NATS never redelivers. With ``stream`` it is a
durable pull consumer (``sluice-trigger-<name>``) on the user's own stream, which Sluice never
creates: a message is acknowledged only after the sink has committed its event, so a crash, a
pause or a failing sink leaves it on the stream to be delivered again, and the dedupe key
(``Nats-Msg-Id``, else ``<stream>:<stream sequence>``) turns the repeat into a ``duplicate``.

JetStream messages are pulled with a window of ``max_in_flight`` sink calls: one pull request at a
time asks for what the window has free, with a long expiry and idle heartbeats, so a message is
handed to the sink as soon as it is stored (no polling), and a busy sink still has up to
``max_in_flight`` commits running at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from triggers import specs
from triggers.base import EventSink, SaveState, Source, TriggerConfig, TriggerError, TriggerEvent

log = structlog.get_logger(__name__)

MAX_IN_FLIGHT = 64
"""Sink calls running at once per trigger (a JetStream pull asks for no more than are free)."""
MAX_ACK_PENDING = 1000
ACK_WAIT_S = 5.0
API_TIMEOUT_S = 5.0
PULL_EXPIRES_S = 30.0
PULL_HEARTBEAT_S = 5.0
PULL_SILENCE_S = 2 * PULL_HEARTBEAT_S + 1.0
"""No message and no heartbeat for this long: the pull request was lost (a reconnect); ask again."""
LAG_TIMEOUT_S = 1.0
LAG_MAX_AGE_S = 3.0
"""``status`` asks for a fresh consumer lag when the one it has is older than this."""
LAG_REFRESH_S = 30.0
NAK_BASE_DELAY_S = 0.5
NAK_MAX_DELAY_S = 30.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
CORE_ATTEMPTS = 5
"""Sink calls for one core message before it is dropped (core NATS cannot redeliver it)."""
STOP_GRACE_S = 5.0
"""How long ``remove`` and teardown let running sink calls finish before cancelling them."""
STOP_TIMEOUT_S = 10.0
MSG_ID_HEADER = "Nats-Msg-Id"
JS_API_PREFIX = "$JS.API"


# ---------------------------------------------------------------------------------------------
# Pure logic: event fields, matching, keys, delays.


def durable_name(trigger: str) -> str:
    """The JetStream durable consumer that trigger ``trigger`` reads its stream through."""
    return f"sluice-trigger-{trigger}"


def decode_data(payload: bytes) -> Any:
    """A message payload as the ``data`` event field: any JSON value, or the text when not JSON."""
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload.decode("utf-8", errors="replace")


def event_fields(subject: str, payload: bytes, headers: Mapping[str, str] | None) -> dict[str, Any]:
    """The event fields of contract §3 for one message: ``subject``, ``data``, ``headers``."""
    return {
        "subject": subject,
        "data": decode_data(payload),
        "headers": {str(name): value for name, value in (headers or {}).items()},
    }


_MISSING = object()


def lookup(fields: Any, path: str) -> Any:
    """The value at dotted ``path`` in nested mappings (and lists, by index), or ``_MISSING``."""
    value = fields
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def same_value(actual: Any, expected: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``, ``null`` is ``None``."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    return actual == expected


def matches(fields: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    """Whether every dotted path of ``match`` (relative to the event fields, e.g. ``data.kind``)
    is present in ``fields`` and equals the given value."""
    for path, expected in match.items():
        actual = lookup(fields, path)
        if actual is _MISSING or not same_value(actual, expected):
            return False
    return True


def stream_dedupe_key(headers: Mapping[str, str] | None, stream: str, stream_seq: int) -> str:
    """A JetStream message's dedupe key: its ``Nats-Msg-Id`` (the publisher's own id, which holds
    beyond the stream's duplicate window), else its place in the stream (the same on redelivery)."""
    msg_id = (headers or {}).get(MSG_ID_HEADER)
    return msg_id if msg_id else f"{stream}:{stream_seq}"


def core_dedupe_key(headers: Mapping[str, str] | None) -> str:
    """A core message's dedupe key: its ``Nats-Msg-Id``, else a fresh one (core NATS never
    redelivers, so nothing else could repeat it; a publisher that retries should set the header)."""
    msg_id = (headers or {}).get(MSG_ID_HEADER)
    return msg_id if msg_id else uuid.uuid4().hex


def retry_delay(attempt: int, *, base: float = NAK_BASE_DELAY_S, cap: float = NAK_MAX_DELAY_S) -> float:
    """Bounded exponential backoff: ``base`` after the first failure, doubling, at most ``cap``."""
    return min(cap, base * 2 ** max(0, min(attempt - 1, 30)))


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be subscribed to, or None: tokens separated by dots, none empty or
    with white space, ``*`` and ``>`` only as whole tokens and ``>`` only last."""
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            return f"subject {subject!r} has an empty token"
        if any(char.isspace() for char in token):
            return f"subject {subject!r} contains white space"
        if ("*" in token or ">" in token) and token not in ("*", ">"):
            return f"subject {subject!r}: wildcards must be whole tokens"
        if token == ">" and index != len(tokens) - 1:
            return f"subject {subject!r}: '>' must be the last token"
    return None


def consumer_config(
    trigger: str, spec: specs.NatsSource, *, ack_wait: float, max_ack_pending: int
) -> ConsumerConfig:
    """The durable pull consumer of a JetStream trigger. ``deliver_policy`` counts only when the
    consumer is first created (the whole stream); an update keeps the consumer's position."""
    name = durable_name(trigger)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"Sluice trigger {trigger}",
        filter_subject=spec.subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
    )


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that an await swallowed: Python 3.11's ``asyncio.wait_for`` (inside
    nats-py's requests) returns the result when it races a ``cancel()``. Loops call this each turn."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def round_trip(nc: NATS) -> None:
    """Until the server has processed what this client sent before (a request is answered in order;
    without JetStream the no-responders answer does as well). Not ``nc.flush()``: nats-py 2.16
    leaves the PONG future of a cancelled or timed-out flush in its queue, and the next PONG then
    breaks the connection's read loop."""
    with contextlib.suppress(nats.errors.Error):
        await nc.request(f"{JS_API_PREFIX}.INFO", b"", timeout=API_TIMEOUT_S)


def describe(exc: BaseException) -> str:
    """One line for an error, unwrapping the exception groups of task groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------
# The source.


class NatsSource(Source):
    """Serves every ``nats`` trigger over one connected NATS client, which the caller owns."""

    kind = "nats"

    def __init__(
        self,
        nc: NATS,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        ack_wait: float = ACK_WAIT_S,
        max_ack_pending: int = MAX_ACK_PENDING,
        stop_grace: float = STOP_GRACE_S,
        lag_max_age: float = LAG_MAX_AGE_S,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._nc = nc
        self._js = nc.jetstream(timeout=API_TIMEOUT_S)
        self.max_in_flight = max_in_flight
        self.ack_wait = ack_wait
        self.max_ack_pending = max(max_ack_pending, max_in_flight)
        self.stop_grace = stop_grace
        self.lag_max_age = lag_max_age
        self._sink: EventSink | None = None
        self._runners: dict[str, _Runner] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def start(self, stack: contextlib.AsyncExitStack, sink: EventSink, save_state: SaveState) -> None:
        """Nothing to acquire but the sink (the client is the caller's); teardown stops every
        trigger: running sink calls get ``stop_grace`` to finish, unacked messages are nak'ed."""
        self._sink = sink
        stack.push_async_callback(self._close)

    async def _close(self) -> None:
        runners, self._runners = list(self._runners.values()), {}
        async with asyncio.TaskGroup() as group:
            for runner in runners:
                group.create_task(runner.stop(), name=f"nats-trigger-stop-{runner.name}")
        self._sink = None

    async def put(self, trigger: TriggerConfig) -> None:
        """Subscribe (core) or bind the durable consumer (JetStream) for ``trigger``.

        When it returns, a core trigger is subscribed on the server. A changed spec restarts the
        trigger: a changed ``match`` keeps the consumer and its position, a changed subject updates
        the consumer's filter in place (its position is kept: messages of the new subject stored
        before it are not replayed), a changed or dropped ``stream`` deletes the consumer on the
        old stream. Raises ``TriggerError`` when the trigger cannot be watched now (a stream that
        does not exist, JetStream not answering, an invalid subject); except for an invalid spec the
        source keeps trying with backoff, ``status`` shows the error, and the trigger starts once
        the stream is there.
        """
        spec = trigger.on
        if not isinstance(spec, specs.NatsSource):
            raise TriggerError(f"trigger {trigger.name}: not a nats source ({type(spec).__name__})")
        if self._sink is None:
            raise RuntimeError("NatsSource.put before start (or after teardown)")
        async with self._locks[trigger.name]:
            current = self._runners.get(trigger.name)
            if current is not None and current.spec == spec:
                if not current.started:  # a spec no runner can watch
                    raise TriggerError(current.error or f"trigger {trigger.name} cannot be watched")
                return
            if current is not None:
                del self._runners[trigger.name]
                await current.stop()
                if current.spec.stream is not None and current.spec.stream != spec.stream:
                    await self._delete_quietly(trigger.name, current.spec.stream)
            runner: _Runner
            if spec.stream is None:
                runner = _CoreRunner(self, trigger.name, spec, self._sink)
            else:
                runner = _StreamRunner(self, trigger.name, spec, self._sink)
            self._runners[trigger.name] = runner
            if problem := subject_problem(spec.subject):
                runner.error = f"trigger {trigger.name}: {problem}"
                raise TriggerError(runner.error)
            try:
                await runner.prepare()
            except TriggerError as exc:
                runner.error = str(exc)
                runner.start()
                raise
            except BaseException:
                del self._runners[trigger.name]
                raise
            runner.start()

    async def remove(self, name: str) -> None:
        """Stop watching ``name`` (paused or deleted). A JetStream trigger's durable consumer stays,
        so that a resume continues where it stopped, messages published meanwhile included; a
        deleted trigger's consumer goes with ``delete_consumer``. Running sink calls get
        ``stop_grace`` to finish; messages not acked by then are nak'ed for prompt redelivery."""
        async with self._locks[name]:
            runner = self._runners.pop(name, None)
            if runner is not None:
                await runner.stop()

    async def forget(self, name: str, on: specs.EventSource) -> None:
        """A deleted trigger: its durable consumer goes too (a paused one keeps it)."""
        if isinstance(on, specs.NatsSource) and on.stream:
            await self.delete_consumer(name, on.stream)
        else:
            await self.remove(name)

    async def delete_consumer(self, name: str, stream: str) -> None:
        """Forget a deleted trigger: stop it, and delete its durable consumer on ``stream`` (its
        position and unacked messages); a consumer that is not there is fine. Raises
        ``TriggerError`` when JetStream refuses or does not answer."""
        await self.remove(name)
        try:
            await self._js.delete_consumer(stream, durable_name(name))
        except nats.js.errors.NotFoundError:
            return
        except (nats.errors.Error, ValueError) as exc:
            raise TriggerError(
                f"trigger {name}: could not delete consumer {durable_name(name)} on stream {stream}: "
                f"{describe(exc)}"
            ) from exc
        log.info("nats_consumer_deleted", trigger=name, stream=stream, consumer=durable_name(name))

    async def _delete_quietly(self, name: str, stream: str) -> None:
        try:
            await self._js.delete_consumer(stream, durable_name(name))
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, ValueError) as exc:
            log.warning("nats_consumer_delete_failed", trigger=name, stream=stream, error=describe(exc))

    def status(self, name: str) -> Mapping[str, Any]:
        """``subject``, ``stream``, ``consumer_lag`` (JetStream: messages of the filter not yet
        delivered, at most a few seconds old; None for core or before it is known),
        ``ack_pending`` (delivered, not yet acked), ``in_flight`` (sink calls running) and
        ``error`` (why the trigger is not watching now, or None)."""
        runner = self._runners.get(name)
        return {} if runner is None else runner.status()


# ---------------------------------------------------------------------------------------------
# One running trigger.


class _Runner:
    """One trigger's owned task: a supervised session (subscription and sink calls) that is
    restarted with bounded backoff when it fails, until ``stop``."""

    def __init__(self, source: NatsSource, name: str, spec: specs.NatsSource, sink: EventSink) -> None:
        self.source = source
        self.name = name
        self.spec = spec
        self.sink = sink
        self.error: str | None = None
        self._nc = source._nc
        self._window = source.max_in_flight
        self._task: asyncio.Task[None] | None = None
        self._intake: asyncio.Task[None] | None = None
        self._closing = False
        self._in_flight = 0
        self._wake = asyncio.Event()

    async def prepare(self) -> None:
        """What must hold when ``put`` returns; raises ``TriggerError``."""

    async def _session(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        return {
            "subject": self.spec.subject,
            "stream": self.spec.stream,
            "consumer_lag": None,
            "in_flight": self._in_flight,
            "error": self.error,
        }

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"nats-trigger-{self.name}")
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.error = describe(task.exception())
            log.error("nats_trigger_died", trigger=self.name, error=self.error)

    async def _supervise(self) -> None:
        delay = RETRY_MIN_S
        with structlog.contextvars.bound_contextvars(trigger=self.name, stream=self.spec.stream):
            log.info("nats_trigger_started", subject=self.spec.subject)
            while not self._closing:
                raise_if_cancelled()
                began = time.monotonic()
                # A task of its own: on Python 3.11 a task group whose child failed leaves its parent
                # task's cancel count raised, which would read as a cancellation here ever after.
                session = asyncio.create_task(self._session(), name=f"nats-session-{self.name}")
                try:
                    await session
                except Exception as exc:
                    if self._closing:
                        return
                    if time.monotonic() - began > RETRY_MAX_S:
                        delay = RETRY_MIN_S
                    self.error = describe(exc)
                    log.warning("nats_trigger_failed", error=self.error, retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)

    async def stop(self) -> None:
        """Stop taking messages, let running sink calls finish (``stop_grace``), cancel the rest."""
        self._closing = True
        if self._task is None:
            return
        try:
            if self._intake is not None:
                self._intake.cancel()
                await asyncio.wait({self._intake}, timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.source.stop_grace):
                    while self._in_flight:
                        self._wake.clear()
                        await self._wake.wait()
        finally:
            self._task.cancel()  # also when ``stop`` itself is cancelled: no runner outlives it
        done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
        if not done:
            log.error("nats_trigger_stop_timeout", trigger=self.name, timeout_s=STOP_TIMEOUT_S)
        log.info("nats_trigger_stopped", trigger=self.name, stream=self.spec.stream)

    async def _wait_for_slot(self, free: int) -> None:
        """Until at least ``free`` of the window's sink calls are free."""
        while self._window - self._in_flight < free:
            self._wake.clear()
            await self._wake.wait()

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake.set()


class _CoreRunner(_Runner):
    """A core subscription: at-most-once. A message that arrives while nothing is subscribed is
    lost, and one whose sink calls keep failing is dropped after ``CORE_ATTEMPTS`` (logged)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._sub: Subscription | None = None

    async def prepare(self) -> None:
        self._sub = await self._subscribe()

    async def _subscribe(self) -> Subscription:
        try:
            sub = await self._nc.subscribe(self.spec.subject)
        except nats.errors.Error as exc:
            raise TriggerError(
                f"trigger {self.name}: cannot subscribe to {self.spec.subject}: {describe(exc)}"
            ) from exc
        await round_trip(self._nc)  # subscribed on the server when ``put`` returns
        return sub

    async def stop(self) -> None:
        await super().stop()
        await self._unsubscribe()  # made by ``prepare`` for a session that never ran

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _session(self) -> None:
        if self._sub is None:
            self._sub = await self._subscribe()
        sub = self._sub
        self.error = None
        try:
            async with asyncio.TaskGroup() as handlers:
                self._intake = handlers.create_task(self._read(sub, handlers), name=f"nats-read-{self.name}")
        finally:
            self._intake = None
            await self._unsubscribe()

    async def _read(self, sub: Subscription, handlers: asyncio.TaskGroup) -> None:
        try:
            async for msg in sub.messages:
                raise_if_cancelled()
                await self._wait_for_slot(1)
                self._in_flight += 1
                handlers.create_task(self._handle(msg), name=f"nats-event-{self.name}")
        finally:
            await self._unsubscribe()  # at once: a stopping trigger takes no more messages
        raise TriggerError(f"trigger {self.name}: the subscription to {self.spec.subject} ended")

    async def _handle(self, msg: Msg) -> None:
        try:
            fields = event_fields(msg.subject, msg.data, msg.headers)
            if not matches(fields, self.spec.match):
                return
            event = TriggerEvent(trigger=self.name, dedupe_key=core_dedupe_key(msg.headers), fields=fields)
            for attempt in range(1, CORE_ATTEMPTS + 1):
                try:
                    await self.sink(event)
                    return
                except Exception as exc:
                    if attempt == CORE_ATTEMPTS:
                        log.error(
                            "nats_event_dropped",
                            trigger=self.name,
                            subject=msg.subject,
                            dedupe_key=event.dedupe_key,
                            attempts=attempt,
                            error=describe(exc),
                        )
                        return
                    delay = retry_delay(attempt)
                    log.warning(
                        "nats_event_sink_failed",
                        trigger=self.name,
                        subject=msg.subject,
                        dedupe_key=event.dedupe_key,
                        attempt=attempt,
                        retry_in=delay,
                        error=describe(exc),
                    )
                    await asyncio.sleep(delay)
        finally:
            self._release()


class _StreamRunner(_Runner):
    """A JetStream durable pull consumer: at-least-once delivery, acked after the sink commits."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        assert self.spec.stream is not None
        self.stream: str = self.spec.stream
        self.consumer = durable_name(self.name)
        self._next_subject = f"{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"
        self._ensured = False
        self._lag: int | None = None
        self._ack_pending: int | None = None
        self._info_at = 0.0
        self._lag_wanted = asyncio.Event()
        self._working: dict[int, tuple[Msg, float]] = {}

    def status(self) -> dict[str, Any]:
        if time.monotonic() - self._info_at > self.source.lag_max_age:
            self._lag_wanted.set()
        return super().status() | {"consumer_lag": self._lag, "ack_pending": self._ack_pending}

    async def prepare(self) -> None:
        await self._ensure()
        self._ensured = True

    async def _ensure(self) -> None:
        """Create the durable consumer, or update it to the spec; never the stream."""
        config = consumer_config(
            self.name, self.spec, ack_wait=self.source.ack_wait, max_ack_pending=self.source.max_ack_pending
        )
        try:
            info = await self.source._js.add_consumer(self.stream, config=config)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == 10059:
                raise TriggerError(
                    f"trigger {self.name}: JetStream stream {self.stream} does not exist "
                    "(Sluice never creates a trigger's stream; create it, or drop `stream` for core NATS)"
                ) from exc
            raise TriggerError(f"trigger {self.name}: stream {self.stream}: {describe(exc)}") from exc
        except nats.js.errors.APIError as exc:
            raise TriggerError(
                f"trigger {self.name}: JetStream refused consumer {self.consumer} on stream {self.stream}: "
                f"{exc.description or describe(exc)}"
            ) from exc
        except (nats.errors.Error, TimeoutError, ValueError) as exc:
            raise TriggerError(
                f"trigger {self.name}: cannot bind consumer {self.consumer} on stream {self.stream}: "
                f"{describe(exc)}"
            ) from exc
        self._set_info(info.num_pending, info.num_ack_pending)

    def _set_info(self, pending: int, ack_pending: int) -> None:
        self._lag, self._ack_pending, self._info_at = pending, ack_pending, time.monotonic()

    async def _session(self) -> None:
        if not self._ensured:
            await self._ensure()
            raise_if_cancelled()
        self._ensured = False  # a session that fails binds again before the next one
        self.error = None
        sub: Subscription | None = None
        try:
            async with asyncio.TaskGroup() as handlers:
                pull = _Pull(self, self._nc.new_inbox(), handlers)
                sub = await self._nc.subscribe(f"{pull.inbox}.*", cb=pull.on_message)
                self._intake = handlers.create_task(pull.run(sub), name=f"nats-pull-{self.name}")
                handlers.create_task(self._refresh_lag(), name=f"nats-lag-{self.name}")
                handlers.create_task(self._keep_working(), name=f"nats-progress-{self.name}")
        finally:
            if sub is not None:  # ``pull.run`` unsubscribes; this is for a session cut short
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        try:
            meta = msg.metadata
        except Exception as exc:
            self._release()
            log.warning("nats_message_unreadable", trigger=self.name, reply=msg.reply, error=str(exc))
            return
        seq = meta.sequence.stream
        self._lag = meta.num_pending  # as of this delivery; consumer info keeps it fresh when idle
        self._working[id(msg)] = (msg, time.monotonic())
        try:
            fields = event_fields(msg.subject, msg.data, msg.headers)
            if matches(fields, self.spec.match):
                key = stream_dedupe_key(msg.headers, self.stream, seq)
                await self.sink(TriggerEvent(trigger=self.name, dedupe_key=key, fields=fields))
            await self._settle(msg.ack, seq)
        except asyncio.CancelledError:
            await asyncio.shield(self._settle(msg.nak, seq))
            raise
        except Exception as exc:
            delay = retry_delay(meta.num_delivered)
            log.warning(
                "nats_event_sink_failed",
                trigger=self.name,
                stream=self.stream,
                seq=seq,
                delivered=meta.num_delivered,
                nak_delay=delay,
                error=describe(exc),
            )
            await self._settle(lambda: msg.nak(delay=delay), seq)
        finally:
            self._working.pop(id(msg), None)
            self._release()

    async def _settle(self, reply: Any, seq: int) -> None:
        """Ack or nak; a lost one only means a redelivery after ``ack_wait``."""
        try:
            await reply()
        except nats.errors.Error as exc:
            log.warning("nats_ack_failed", trigger=self.name, stream=self.stream, seq=seq, error=str(exc))

    async def _keep_working(self) -> None:
        """Tell JetStream that sink calls running longer than a third of ``ack_wait`` are still
        being worked on, so that a slow commit is not redelivered while it runs."""
        interval = self.source.ack_wait / 3
        while True:
            raise_if_cancelled()
            await asyncio.sleep(interval)
            since = time.monotonic() - interval
            for msg, started in list(self._working.values()):
                if started < since:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()

    async def _refresh_lag(self) -> None:
        """Consumer info every ``LAG_REFRESH_S``, or sooner (at most once a second) when ``status``
        found the last one older than ``lag_max_age``."""
        while True:
            try:
                info = await self.source._js.consumer_info(self.stream, self.consumer, timeout=LAG_TIMEOUT_S)
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("nats_lag_unavailable", trigger=self.name, stream=self.stream, error=describe(exc))
            else:
                self._set_info(info.num_pending, info.num_ack_pending)
            raise_if_cancelled()
            self._lag_wanted.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAG_REFRESH_S):
                    await self._lag_wanted.wait()
            await asyncio.sleep(min(1.0, self.source.lag_max_age))


class _Pull:
    """The pull requests of one JetStream session: one request at a time asks for what the window
    has free. Deliveries go to handler tasks straight from the subscription's callback, so that a
    burst is handed out in one pass of the event loop and its acks leave together.

    A request ends when it got its batch, or with a 404/408 status (it expired); silence beyond the
    idle heartbeat means it was lost (a reconnect); another status (409 consumer deleted, 503 no
    consumer) ends the session, which the runner restarts after binding the consumer again."""

    def __init__(self, runner: _StreamRunner, inbox: str, handlers: asyncio.TaskGroup) -> None:
        self.runner = runner
        self.inbox = inbox
        self.handlers = handlers
        self.reply: str | None = None
        self.wanted = self.received = self.number = 0
        self.heard = time.monotonic()
        self.failure: str | None = None
        self.accepting = True

    async def on_message(self, msg: Msg) -> None:
        runner = self.runner
        if msg.reply:  # a message of the stream
            if not self.accepting:  # delayed: no ping-pong with the request being ended
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=NAK_BASE_DELAY_S)
                return
            self.heard = time.monotonic()
            self.received += 1
            if self.reply is not None and self.received >= self.wanted:
                self.reply = None
                runner._wake.set()
            try:
                self.handlers.create_task(runner._handle(msg), name=f"nats-event-{runner.name}")
            except RuntimeError:  # the session is shutting down
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak()
                return
            runner._in_flight += 1
            return
        if msg.subject != self.reply:
            return  # the end of an earlier request
        self.heard = time.monotonic()
        status = (msg.headers or {}).get("Status")
        if status == "100":
            return
        self.reply = None
        if status not in ("404", "408"):
            description = (msg.headers or {}).get("Description", "").strip()
            self.failure = (
                f"trigger {runner.name}: JetStream stopped delivering from stream {runner.stream} "
                f"(consumer {runner.consumer}): {status} {description}".rstrip()
            )
        runner._wake.set()

    async def run(self, sub: Subscription) -> None:
        runner = self.runner
        threshold = max(1, runner._window // 4)
        try:
            while True:
                raise_if_cancelled()
                if self.failure:
                    raise TriggerError(self.failure)
                timeout: float | None = None
                if self.reply is None:
                    free = runner._window - runner._in_flight
                    if free >= threshold:
                        await self._request(free)
                        continue
                else:
                    timeout = self.heard + PULL_SILENCE_S - time.monotonic()
                    if timeout <= 0:
                        log.info("nats_pull_silent", trigger=runner.name, stream=runner.stream)
                        self.reply = None
                        continue
                runner._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await runner._wake.wait()
        finally:
            await asyncio.shield(self._give_back(sub))

    async def _request(self, batch: int) -> None:
        self.number += 1
        self.reply, self.wanted, self.received = f"{self.inbox}.{self.number}", batch, 0
        self.heard = time.monotonic()
        request = {
            "batch": batch,
            "expires": int(PULL_EXPIRES_S * 1e9),
            "idle_heartbeat": int(PULL_HEARTBEAT_S * 1e9),
        }
        await self.runner._nc.publish(
            self.runner._next_subject, json.dumps(request).encode(), reply=self.reply
        )

    async def _give_back(self, sub: Subscription) -> None:
        """End the outstanding request: what it delivered until the server answers a round trip is
        nak'ed (a resume gets it at once), then unsubscribe; once this returns the server has the
        unsubscribe. Only a message sent in the one round trip between the two is dropped here and
        comes back after ``ack_wait``."""
        self.accepting = False
        await round_trip(self.runner._nc)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        await round_trip(self.runner._nc)
