"""What the refresh scheduler keeps per grant, beside the grant itself. Plain data."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScheduleEntry"]


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """A grant's place in the scheduler's plan.

    `hot`: marked to be kept fresh whatever its use; `last_used_at`: when the service last handed out its token;
    `next_due_at`: when a scheduler next looks at it (0: at once); `warned_at`: when a scheduler last warned of its
    refresh token's absolute end."""

    grant: str
    hot: bool
    last_used_at: float | None
    next_due_at: float
    warned_at: float | None
