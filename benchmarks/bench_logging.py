"""One INFO line through serve's logging (redacted) vs the same line through a plain structlog JSON renderer.

`grantkeeper serve` runs at INFO by default (`serve.logs.configure_logging`), so every refresh writes the
protocol's attempt line and every answered request writes a ``request`` line. Both pass through grantkeeper's
redaction (I6: no token in any log line). The baseline is what an application gets from structlog with no
redaction at all: the same stdlib record through a `ProcessorFormatter` with serve's own chain for such records
(the logger name, bound context variables, the level, an ISO time stamp, the exception) minus its redaction,
rendered to JSON; the same ``request`` event through a structlog logger with the level, the time stamp and
`JSONRenderer`. Both sides write to ``os.devnull`` through the same kind of stream handler.

The attempt line is the real one: it is captured from a refresh of a real `Keeper` against the provider
simulator, then replayed the way the drivers log it (``logger.log(level, message, extra={"grantkeeper":
evidence})``). The ratio is measured with a registry of `LIVE_SECRETS` live Secrets (a broker holding that many
tokens); the notes give `live_values_in` and `scrub_text` per call with 0, 1,000 and 100,000 live Secrets, and
what one `Secret()` costs to make and drop.

Target: <= 1.5x the unredacted line. Redaction is a safety net, not the product; a broker at INFO should not pay
more than half again what the log line itself costs.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import structlog

from benchmarks._common import Report, Row, Sample, format_value, interleave, sim_provider, standalone
from grantkeeper import Keeper, Secret
from grantkeeper._secrets import live_values_in
from grantkeeper.redact import scrub_text
from grantkeeper.serve.logs import RequestLog, configure_logging
from grantkeeper.testing.simulator import ProviderSimulator

NAME = "logging"
TITLE = "one INFO line through serve's redacting logging vs plain structlog JSON"
TARGET = 1.5
LIVE_SECRETS = 1_000
REGISTRY_SIZES = (0, 1_000, 100_000)
REQUEST = {"method": "GET", "path": "/v1/grants/crm-prod-0042/token", "route": "/v1/grants/{name}/token",
           "status": 200, "api_key": "scheduler-east", "outcome": None, "ms": 0.412}  # fmt: skip


def attempt_record() -> tuple[str, dict[str, Any]]:
    """The message and evidence of the INFO attempt line a real refresh logs (captured, not written by hand)."""
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger("grantkeeper")
    handler, saved = Capture(), (logger.handlers, logger.level, logger.propagate)
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    try:
        with (
            ProviderSimulator() as sim,
            tempfile.TemporaryDirectory(prefix="grantkeeper-bench-") as tmp,
            Keeper.open(f"sqlite://{Path(tmp) / 'grants.db'}") as keeper,
        ):
            keeper.add_provider(sim_provider(sim))
            keeper.import_grant("crm-prod-0042", provider="sim", refresh_token=sim.issue_grant())
            keeper.refresh("crm-prod-0042", force=True)
    finally:
        logger.handlers, logger.level, logger.propagate = saved
    lines = [r for r in captured if "refresh attempt" in r.msg and isinstance(r.__dict__.get("grantkeeper"), dict)]
    if not lines:
        raise RuntimeError("the refresh logged no attempt line at INFO; the benchmark would measure nothing")
    record = lines[-1]
    return record.getMessage(), dict(record.__dict__["grantkeeper"])


def _plain_stdlib(stream: Any) -> logging.Logger:
    """The baseline for stdlib records: serve's chain for them (logger name, bound context variables, level, time
    stamp, exception) rendered to JSON, without any redaction."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.contextvars.merge_contextvars,
                           structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                           structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.JSONRenderer()],
    ))  # fmt: skip
    logger = logging.getLogger("grantkeeper.bench_plain")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger


def _plain_structlog(stream: Any) -> Any:
    chain = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
             structlog.processors.JSONRenderer()]  # fmt: skip
    level = structlog.make_filtering_bound_logger(logging.INFO)
    return structlog.wrap_logger(structlog.PrintLogger(stream), processors=chain, wrapper_class=level)


def _per_call(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    def round_() -> float:
        rng = range(calls)
        t0 = perf_counter_ns()
        for _ in rng:
            fn()
        return (perf_counter_ns() - t0) / calls

    return round_


def _row(measured: str, a_label: str, b_label: str, results: dict[str, Sample]) -> Row:
    a, b = results["redacted"].median, results["plain"].median
    ratio = a / b
    return Row(NAME, measured, a_label, a, b_label, b, "ns", ratio, f"<= {TARGET:.1f}", ratio <= TARGET)


def _median_ns(fn: Callable[[], object], calls: int, repeats: int) -> float:
    return statistics.median(_per_call(fn, calls)() for _ in range(repeats))


def _secret_cost(count: int) -> float:
    """ns to make and drop one `Secret` of a fresh 43-character value (the cost every token read pays)."""
    values = [secrets.token_urlsafe(32) for _ in range(count)]
    gc.collect()
    t0 = perf_counter_ns()
    for value in values:
        Secret(value)
    return (perf_counter_ns() - t0) / count


def run(quick: bool = False) -> Report:
    calls, rounds, warmup = (200, 5, 1) if quick else (2_000, 21, 2)
    started = time.perf_counter()
    report = Report(NAME, TITLE)
    message, evidence = attempt_record()
    live = [Secret(secrets.token_urlsafe(32)) for _ in range(LIVE_SECRETS)]
    with open(os.devnull, "w") as null:
        configure_logging("info", stream=null)
        try:
            served, plain = logging.getLogger("grantkeeper"), _plain_stdlib(null)
            request_line, plain_events = RequestLog(), _plain_structlog(null)
            extra = {"grantkeeper": evidence}
            attempt = interleave(
                {
                    "redacted": _per_call(lambda: served.log(logging.INFO, message, extra=extra), calls),
                    "plain": _per_call(lambda: plain.log(logging.INFO, message, extra=extra), calls),
                },
                rounds=rounds,
                warmup=warmup,
            )
            request = interleave(
                {
                    "redacted": _per_call(lambda: request_line.write(**REQUEST), calls),  # type: ignore[arg-type]
                    "plain": _per_call(lambda: plain_events.info("request", **REQUEST), calls),
                },
                rounds=rounds,
                warmup=warmup,
            )
        finally:
            configure_logging("info")  # back to stderr: the devnull stream is closed next
    report.rows.append(_row(f"attempt line, INFO ({LIVE_SECRETS:,} live Secrets)", "serve configure_logging",
                            "structlog JSON, no redaction", attempt))  # fmt: skip
    report.rows.append(_row("request line, INFO", "serve RequestLog", "structlog JSON, no redaction", request))
    for name, results in (("attempt", attempt), ("request", request)):
        report.notes.append(f"{name}: redacted {results['redacted'].spread('ns')}")
        report.notes.append(f"{name}: plain    {results['plain'].spread('ns')}")
    report.notes.append(f"the attempt line ({len(message)} characters): {message}")

    del live
    gc.collect()
    scans = (200, 7) if quick else (2_000, 15)
    for size in REGISTRY_SIZES:
        held = [Secret(secrets.token_urlsafe(32)) for _ in range(size)]
        values = _median_ns(lambda: live_values_in(message), *scans)
        scrubbed = _median_ns(lambda: scrub_text(message), *scans)
        report.notes.append(f"{size:>7,} live Secrets: live_values_in {format_value(values, 'ns')}, scrub_text "
                            f"{format_value(scrubbed, 'ns')} per call on the attempt message")  # fmt: skip
        del held
        gc.collect()
    made = statistics.median(_secret_cost(2_000 if quick else 20_000) for _ in range(5))
    report.notes.append(f"Secret(): {format_value(made, 'ns')} to make and drop one (43-character value)")
    report.seconds = time.perf_counter() - started
    return report


if __name__ == "__main__":
    standalone(run)
