"""Telling people: events for grants that need a human (callbacks, a signed webhook)."""

from grantkeeper.notify.events import EVENT_KINDS, EventSink, GrantEvent, Notifier, event_for
from grantkeeper.notify.webhook import Webhook, sign, verify_signature

__all__ = ["EVENT_KINDS", "EventSink", "GrantEvent", "Notifier", "Webhook", "event_for", "sign", "verify_signature"]
