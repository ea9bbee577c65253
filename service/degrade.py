"""Graceful degradation: serve a cheaper nested budget level before shedding anything.

A nested artifact serves every domain at several budget levels of one weight set (largest
first). With ``MDP_DEGRADE=on`` the engine asks :class:`DegradePolicy` at every micro-batch
which level new batches may use at most, from the queue delay of the batch's oldest image:

* above ``MDP_DEGRADE_HIGH`` of the request deadline (``MDP_REQUEST_TIMEOUT_S``): one level
  down (cheaper);
* below ``MDP_DEGRADE_LOW`` of the deadline: one level up;
* in between (the hysteresis band) the level stays, and a level holds for at least
  ``MDP_DEGRADE_HOLD_MS`` after each change, so that the effect of a change is seen before the
  next one.

A batch runs at the request's own level or the policy's, whichever is cheaper; the answer names
the level that computed it. Requests are shed (429) only when a queue is full, which at the
cheapest level means that even it cannot keep up. Off (the default), every request is computed
at its own level.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DegradePolicy"]


@dataclass
class DegradePolicy:
    """The level cap (an index into the levels, ``0`` the largest) and how it moves."""

    levels: int
    deadline_s: float
    high: float = 0.5
    low: float = 0.1
    hold_s: float = 0.5
    enabled: bool = False
    level: int = 0
    changed_at: float = float("-inf")
    steps_down: int = 0
    steps_up: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 1:
            raise ValueError(f"degradation thresholds need 0 <= low < high <= 1, got {self}")

    def observe(self, queue_delay_s: float, now: float) -> int:
        """The level cap for a batch whose oldest image has waited ``queue_delay_s`` (``now``
        on the caller's monotonic clock)."""
        if not self.enabled or self.levels < 2 or now - self.changed_at < self.hold_s:
            return self.level
        if queue_delay_s > self.high * self.deadline_s and self.level < self.levels - 1:
            self.level += 1
            self.steps_down += 1
            self.changed_at = now
        elif queue_delay_s < self.low * self.deadline_s and self.level > 0:
            self.level -= 1
            self.steps_up += 1
            self.changed_at = now
        return self.level
