"""Redaction for OpenTelemetry: a span processor that hands scrubbed copies of spans to another one.

Span names, attributes, event attributes (exception messages and stack traces included), link attributes
and status descriptions are scrubbed with the rules of `grantkeeper.redact.scrub` before the wrapped
processor (and so its exporter) sees them::

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from grantkeeper.redact.otel import RedactingSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(RedactingSpanProcessor(BatchSpanProcessor(exporter)))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grantkeeper.redact._core import REDACTED, is_sensitive_key, scrub, scrub_text
from grantkeeper.redact._optional import missing_extra

try:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
    from opentelemetry.trace import Link, Status
except ImportError as exc:
    raise missing_extra("grantkeeper.redact.otel", "opentelemetry-sdk", "otel") from exc

__all__ = ["RedactingSpanProcessor", "scrub_span"]


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {key: REDACTED if is_sensitive_key(key) or is_sensitive_key(key.rsplit(".", 1)[-1]) else scrub(value)
            for key, value in (attributes or {}).items()}  # fmt: skip


def scrub_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` with every name, attribute and description scrubbed."""
    status = span.status
    if status.description:
        status = Status(status.status_code, scrub_text(status.description))
    return ReadableSpan(
        name=scrub_text(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_attributes(span.attributes),
        events=[Event(scrub_text(e.name), _attributes(e.attributes), e.timestamp) for e in span.events],
        links=[Link(link.context, _attributes(link.attributes)) for link in span.links],
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanProcessor(SpanProcessor):
    """Passes spans to `inner`, scrubbed at the end (when exporters read them)."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self._inner.on_end(scrub_span(span))

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
