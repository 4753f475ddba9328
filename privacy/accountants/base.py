"""The accountant contract: check the whole event, then (and only then) change state.

After Google's dp_accounting: an accountant that cannot account for *every part* of an
event refuses it with an :class:`~privacy.errors.AccountingError` naming the part, and
its state is left exactly as it was. It never guesses (for instance by treating a
discrete Gaussian as a continuous one, or by ignoring subsampling it cannot analyse),
because an under-estimated epsilon is a privacy failure nobody notices.
"""

from __future__ import annotations

import copy
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol, Self, runtime_checkable

from privacy.errors import AccountingError, PrivacyError
from privacy.events import ComposedEvent, DPEvent, SelfComposedEvent

__all__ = [
    "Accountant",
    "BaseAccountant",
    "check_composition",
    "check_delta",
    "is_count",
    "is_real",
]


@runtime_checkable
class Accountant(Protocol):
    """What every accountant offers; implementations live in this package."""

    @property
    def name(self) -> str:
        """Registry name (``"rdp"``, ``"prv"``)."""
        ...

    def supports(self, event: DPEvent) -> bool:
        """Whether :meth:`compose` would accept ``event`` (checks the whole event)."""
        ...

    def unsupported_reason(self, event: DPEvent) -> str | None:
        """``None`` if ``event`` is supported, else a message naming the unsupported part."""
        ...

    def compose(self, event: DPEvent) -> None:
        """Account for ``event``; raise :class:`AccountingError` (state unchanged) if unsupported."""
        ...

    def epsilon(self, delta: float) -> float:
        """Epsilon of everything composed so far at ``delta`` (``inf`` if non-private)."""
        ...

    def copy(self) -> Self:
        """An independent accountant with the same state (for "what if" questions)."""
        ...


def check_delta(delta: float) -> float:
    """Validate ``delta`` at the boundary: a real number in (0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise PrivacyError(f"delta must be a real number, got {type(delta).__name__}")
    value = float(delta)
    if not 0.0 < value < 1.0:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
    return value


def is_real(x: object) -> bool:
    """A finite-or-infinite real number that is not a bool and not NaN."""
    if not isinstance(x, numbers.Real) or isinstance(x, bool):
        return False
    try:
        return not math.isnan(float(x))
    except OverflowError:  # an int too large for a float is still a real number
        return True


def is_count(x: object) -> bool:
    """A non-negative Python/NumPy integer that is not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and int(x) >= 0


class BaseAccountant(ABC):
    """Shared check-then-compose logic; subclasses say what they support and how to add it."""

    name: str = "base"

    def supports(self, event: DPEvent) -> bool:
        return self.unsupported_reason(event) is None

    def unsupported_reason(self, event: DPEvent) -> str | None:
        return self._check(event, type(event).__name__)

    def compose(self, event: DPEvent) -> None:
        reason = self.unsupported_reason(event)
        if reason is not None:
            raise AccountingError(f"{self.name} accountant cannot account for {reason}")
        self._compose(event)

    @abstractmethod
    def _check(self, event: object, path: str) -> str | None:
        """Return ``None`` if supported, else ``"<path>: <why>"``; must not change state."""

    @abstractmethod
    def _compose(self, event: DPEvent) -> None:
        """Add a supported event to the state, atomically."""

    @abstractmethod
    def epsilon(self, delta: float) -> float: ...

    def copy(self) -> Self:
        """An independent deep copy: composing into it leaves this accountant unchanged."""
        return copy.deepcopy(self)


def check_composition(
    event: SelfComposedEvent | ComposedEvent,
    path: str,
    check: Callable[[object, str], str | None],
) -> str | None:
    """Validate the structure of a composition and every part of it with ``check``.

    Shared by all accountants: they differ in the leaf events they support, not in how
    compositions nest. Returns the first reason a part is unsupported, or ``None``.
    """
    if isinstance(event, SelfComposedEvent):
        if not is_count(event.count):
            return f"{path}.count: must be an integer >= 0, got {event.count!r}"
        return check(event.event, f"{path}.event ({type(event.event).__name__})")
    if not isinstance(event.events, tuple | list):
        return f"{path}.events: must be a tuple of events"
    for i, sub in enumerate(event.events):
        reason = check(sub, f"{path}.events[{i}] ({type(sub).__name__})")
        if reason is not None:
            return reason
    return None
