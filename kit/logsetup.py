"""structlog set-up shared by the daemon and the agent: readable lines on a terminal, JSON lines elsewhere."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(log_format: str | None = None, level: int = logging.INFO) -> None:
    """Route structlog and the standard library's logging through one renderer on stderr.

    ``log_format`` is ``console`` or ``json``; unset means console on a terminal, JSON otherwise.
    """
    if log_format not in (None, "console", "json"):
        raise ValueError(f"SLUICE_LOG_FORMAT must be console or json, not {log_format!r}")
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer = (
        # No local variables in tracebacks: they hold step env values, tokens and credentials.
        structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if log_format == "json" else _identity,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty libraries: their INFO lines are noise for an operator.
    for name in ("aiohttp.access", "pgserver", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # nats-py logs each connection error with its traceback; ours reach the log through error_cb.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    # aiohttp logs a client's malformed request (answered 400) with a traceback: not our error.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


def _identity(logger, method, event_dict):
    return event_dict
