"""Per-client privacy budgets and noise calibration.

User-level privacy in federated learning is a property of each client: a client's
epsilon composes over the aggregations *that client joined*, not over all rounds of
the job. :class:`ClientBudgets` keeps one accountant per client and lets every site
set its own cap; a client whose next aggregation would take it past its cap refuses
to join, and the refusal is recorded for the audit report (NIST SP 800-226 asks who
was protected, at what epsilon and delta, and by which accountant).

:func:`calibrate_noise_multiplier` inverts the accountants: it finds, by bisection,
the smallest noise for which the final epsilon lies in ``[(1 - tolerance) * target,
target]``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from privacy.accountants.base import Accountant, check_delta, is_real
from privacy.accountants.registry import create_accountant, gaussian_training_event
from privacy.errors import AccountingError, BudgetExhaustedError, PrivacyError
from privacy.events import (
    DiscreteGaussianSumEvent,
    DPEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    SkellamSumEvent,
)

__all__ = [
    "ClientBudgets",
    "ClientId",
    "Refusal",
    "calibrate_noise",
    "calibrate_noise_multiplier",
]

ClientId = Hashable
"""Any hashable client identifier (an index or a site name)."""


def _check_cap(cap: float) -> float:
    if not is_real(cap) or cap < 0:
        raise PrivacyError(f"an epsilon cap must be a number >= 0 (inf allowed), got {cap!r}")
    return float(cap)


@dataclass(frozen=True)
class Refusal:
    """A client declined an aggregation because its cap would have been exceeded."""

    client: ClientId
    aggregation: int | None
    epsilon_before: float
    epsilon_after: float
    cap: float
    event: DPEvent


class ClientBudgets:
    """One accountant per client; per-site epsilon caps at a common ``delta``.

    >>> from privacy.events import GaussianEvent
    >>> budgets = ClientBudgets(delta=1e-5, caps={"clinic": 2.5})
    >>> [budgets.join("clinic", GaussianEvent(3.0), aggregation=v) for v in range(4)]
    [True, True, False, False]
    >>> [r.aggregation for r in budgets.refusals]
    [2, 3]
    """

    def __init__(
        self,
        *,
        delta: float,
        accountant: str = "rdp",
        default_cap: float = math.inf,
        caps: Mapping[ClientId, float] | None = None,
    ) -> None:
        self._delta = check_delta(delta)
        create_accountant(accountant)  # validate the name now, not at the first join
        self._accountant_name = accountant
        self._default_cap = _check_cap(default_cap)
        self._caps: dict[ClientId, float] = {}
        for client, cap in (caps or {}).items():
            self._caps[client] = _check_cap(cap)
        self._accountants: dict[ClientId, Accountant] = {}
        self._joined: dict[ClientId, int] = {}
        self._refusals: list[Refusal] = []
        #: Every event composed, per client, in order: the accountants are a function of it.
        self._history: dict[ClientId, list[DPEvent]] = {}

    # -- configuration -------------------------------------------------------------
    @property
    def delta(self) -> float:
        return self._delta

    @property
    def accountant_name(self) -> str:
        return self._accountant_name

    def set_cap(self, client: ClientId, cap: float) -> None:
        """Set ``client``'s own epsilon cap (at this object's ``delta``)."""
        self._caps[client] = _check_cap(cap)

    def cap(self, client: ClientId) -> float:
        return self._caps.get(client, self._default_cap)

    # -- queries ---------------------------------------------------------------------
    @property
    def clients(self) -> tuple[ClientId, ...]:
        """Clients that have joined at least one aggregation."""
        return tuple(self._accountants)

    @property
    def refusals(self) -> tuple[Refusal, ...]:
        return tuple(self._refusals)

    def aggregations_joined(self, client: ClientId) -> int:
        return self._joined.get(client, 0)

    def _accountant(self, client: ClientId) -> Accountant:
        acc = self._accountants.get(client)
        return acc if acc is not None else create_accountant(self._accountant_name)

    def epsilon(self, client: ClientId, delta: float | None = None) -> float:
        """``client``'s epsilon over the aggregations it joined (0 if none)."""
        d = self._delta if delta is None else check_delta(delta)
        acc = self._accountants.get(client)
        return 0.0 if acc is None else acc.epsilon(d)

    def max_epsilon(self, delta: float | None = None) -> float:
        """The largest per-client epsilon (the run's user-level guarantee); 0 if none."""
        return max((self.epsilon(c, delta) for c in self._accountants), default=0.0)

    def epsilon_after(self, client: ClientId, event: DPEvent, delta: float | None = None) -> float:
        """What ``client``'s epsilon would be after ``event``; changes nothing.

        Raises :class:`AccountingError` if the accountant cannot account for ``event``.
        """
        d = self._delta if delta is None else check_delta(delta)
        trial = self._accountant(client).copy()
        trial.compose(event)
        return trial.epsilon(d)

    def would_exceed(self, client: ClientId, event: DPEvent, delta: float | None = None) -> bool:
        """Whether joining ``event`` would take ``client`` past its cap; changes nothing."""
        return self.epsilon_after(client, event, delta) > self.cap(client)

    # -- state changes ------------------------------------------------------------------
    def join(self, client: ClientId, event: DPEvent, *, aggregation: int | None = None) -> bool:
        """Let ``client`` join an aggregation described by ``event`` if its cap allows.

        Returns ``True`` and composes ``event`` into the client's accountant, or returns
        ``False``, records a :class:`Refusal` and leaves the accountant unchanged.
        """
        after = self.epsilon_after(client, event)
        cap = self.cap(client)
        if after > cap:
            self._refusals.append(
                Refusal(
                    client=client,
                    aggregation=aggregation,
                    epsilon_before=self.epsilon(client),
                    epsilon_after=after,
                    cap=cap,
                    event=event,
                )
            )
            return False
        self._commit(client, event)
        return True

    def admit(
        self, clients: Iterable[ClientId], event: DPEvent, *, aggregation: int | None = None
    ) -> list[ClientId]:
        """:meth:`join` each of ``clients``; return those admitted, in order."""
        return [c for c in clients if self.join(c, event, aggregation=aggregation)]

    def charge(self, client: ClientId, event: DPEvent) -> None:
        """Compose ``event`` for ``client`` unconditionally unless it breaks the cap.

        For releases that already happened (the noise was in the sum): raises
        :class:`BudgetExhaustedError` *after* recording, so the overrun is never hidden.
        """
        self._commit(client, event)
        cap = self.cap(client)
        if cap == math.inf:  # nothing to exceed: skip the epsilon conversion
            return
        eps = self.epsilon(client)
        if eps > cap:
            raise BudgetExhaustedError(
                f"client {client!r} is at epsilon {eps:.4g} > its cap {cap:.4g} "
                f"(delta={self._delta:g}, accountant={self._accountant_name})"
            )

    def _commit(self, client: ClientId, event: DPEvent) -> None:
        acc = self._accountant(client)
        acc.compose(event)  # raises before any change if unsupported
        self._accountants[client] = acc
        self._joined[client] = self._joined.get(client, 0) + 1
        self._history.setdefault(client, []).append(event)

    # -- persistence ----------------------------------------------------------------------
    def history(self, client: ClientId) -> tuple[DPEvent, ...]:
        """The events composed for ``client``, in order."""
        return tuple(self._history.get(client, ()))

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during a run, as plain data and :class:`DPEvent` objects:
        each client's composed events in order (the accountants are rebuilt from them,
        bit-exactly, by :meth:`load_state_dict`) and the refusals. ``delta``, the
        accountant name and the caps are included so a restore can check they match.
        Client ids are kept as they are (the caller encodes them)."""
        return {
            "delta": self._delta,
            "accountant": self._accountant_name,
            "default_cap": self._default_cap,
            "caps": [[c, cap] for c, cap in self._caps.items()],
            "history": [[c, list(events)] for c, events in self._history.items()],
            "refusals": [
                {
                    "client": r.client,
                    "aggregation": r.aggregation,
                    "epsilon_before": r.epsilon_before,
                    "epsilon_after": r.epsilon_after,
                    "cap": r.cap,
                    "event": r.event,
                }
                for r in self._refusals
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this object's history by ``state`` (from :meth:`state_dict`).

        Raises :class:`PrivacyError` naming the field when ``delta``, the accountant or a
        cap differs from this object's (a resumed run must account exactly as the
        interrupted one did) or an event cannot be composed; the state is then unchanged.
        """
        if state.get("delta") != self._delta:
            raise PrivacyError(f"budget state is at delta {state.get('delta')!r}, these budgets at {self._delta!r}")
        if state.get("accountant") != self._accountant_name:
            raise PrivacyError(
                f"budget state uses accountant {state.get('accountant')!r}, these budgets {self._accountant_name!r}"
            )
        if state.get("default_cap") != self._default_cap:
            raise PrivacyError(f"budget state has default cap {state.get('default_cap')!r}, not {self._default_cap!r}")
        caps = {c: float(cap) for c, cap in state.get("caps", [])}
        if caps != self._caps:
            raise PrivacyError("budget state has other per-client caps than these budgets")
        accountants: dict[ClientId, Accountant] = {}
        history: dict[ClientId, list[DPEvent]] = {}
        for client, events in state.get("history", []):
            if client in history:
                raise PrivacyError(f"budget state lists client {client!r} twice")
            acc = create_accountant(self._accountant_name)
            for event in events:
                acc.compose(event)  # AccountingError (a PrivacyError) if unsupported
            accountants[client] = acc
            history[client] = list(events)
        refusals = [
            Refusal(
                client=r["client"],
                aggregation=r["aggregation"],
                epsilon_before=float(r["epsilon_before"]),
                epsilon_after=float(r["epsilon_after"]),
                cap=float(r["cap"]),
                event=r["event"],
            )
            for r in state.get("refusals", [])
        ]
        self._accountants = accountants
        self._history = history
        self._joined = {c: len(ev) for c, ev in history.items()}
        self._refusals = refusals


# -- calibration ----------------------------------------------------------------------
def calibrate_noise(
    make_event: Callable[[float], DPEvent],
    *,
    target_epsilon: float,
    delta: float,
    accountant: str = "rdp",
    lower: float = 0.0,
    tolerance: float = 0.01,
    max_noise: float = 1e6,
) -> float:
    """Smallest noise parameter ``x >= lower`` with ``epsilon(make_event(x))`` in
    ``[(1 - tolerance) * target_epsilon, target_epsilon]``, by bisection.

    ``make_event`` must describe a mechanism whose epsilon does not increase with ``x``.
    If even ``x = lower`` meets the target (more noise is not needed), ``lower`` is
    returned. Raises :class:`AccountingError` if ``max_noise`` does not suffice.
    """
    if not is_real(target_epsilon) or not 0 < target_epsilon < math.inf:
        raise AccountingError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if not 0 < tolerance < 1:
        raise AccountingError(f"tolerance must be in (0, 1), got {tolerance!r}")
    d = check_delta(delta)

    def eps(x: float) -> float:
        acc = create_accountant(accountant)
        acc.compose(make_event(x))
        return acc.epsilon(d)

    floor = (1.0 - tolerance) * target_epsilon
    if lower > 0 and eps(lower) <= target_epsilon:
        return lower  # the least admissible noise already meets the target
    # Invariant: epsilon(lo) > target >= epsilon(hi)  (epsilon(0) = inf by definition).
    lo, hi = lower, max(1.0, 2.0 * lower)
    e_hi = eps(hi)
    while e_hi > target_epsilon:
        lo, hi = hi, 2.0 * hi
        if hi > max_noise:
            raise AccountingError(
                f"no noise <= {max_noise:g} reaches epsilon {target_epsilon:g} at delta {d:g}"
            )
        e_hi = eps(hi)
    for _ in range(200):
        if e_hi >= floor:
            return hi
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        e_mid = eps(mid)
        if e_mid > target_epsilon:
            lo = mid
        else:
            hi, e_hi = mid, e_mid
    return hi  # epsilon(hi) <= target always holds; only the 1 % band was missed


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    steps: int,
    sample_rate: float = 1.0,
    mechanism: str = "gaussian",
    accountant: str = "rdp",
    num_clients: int | None = None,
    l2_sensitivity: float = 1.0,
    l1_sensitivity: float | None = None,
    dimension: int | None = None,
    tolerance: float = 0.01,
) -> float:
    """Noise multiplier ``z`` (noise std / l2 sensitivity) meeting ``target_epsilon``.

    The returned ``z`` gives ``(1 - tolerance) * target <= epsilon(z) <= target`` for
    ``steps`` releases on Poisson samples of rate ``sample_rate`` (1 = every unit).

    * ``mechanism="gaussian"``: ``GaussianEvent(z)`` (``accountant`` ``"rdp"`` or ``"prv"``).
    * ``mechanism="discrete_gaussian"``: ``num_clients`` shares of ``N_Z(0, sigma^2)`` with
      ``sigma = z * l2_sensitivity / sqrt(num_clients)`` (so the summed noise has
      standard deviation ``z * l2_sensitivity``); needs ``num_clients``, ``dimension``
      and ``l1_sensitivity`` (integer-domain sensitivities), RDP accountant only.
    * ``mechanism="skellam"``: shares of variance ``mu = (z * l2_sensitivity)^2 /
      num_clients``; needs ``num_clients`` and ``l1_sensitivity``; RDP accountant only.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise AccountingError(f"steps must be an integer >= 1, got {steps!r}")
    if not is_real(sample_rate) or not 0.0 < sample_rate <= 1.0:
        raise AccountingError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if not is_real(l2_sensitivity) or not 0 < l2_sensitivity < math.inf:
        raise AccountingError(f"l2_sensitivity must be finite and > 0, got {l2_sensitivity!r}")
    q = float(sample_rate)
    n = int(steps)

    def repeat(step: DPEvent) -> DPEvent:
        if q < 1.0:
            step = PoissonSampledEvent(q, step)
        return SelfComposedEvent(step, n)

    if mechanism == "gaussian":
        return calibrate_noise(
            lambda z: gaussian_training_event(noise_multiplier=z, sample_rate=q, steps=n),
            target_epsilon=target_epsilon,
            delta=delta,
            accountant=accountant,
            tolerance=tolerance,
        )
    if mechanism not in ("discrete_gaussian", "skellam"):
        raise AccountingError(
            f"unknown mechanism {mechanism!r}; choose 'gaussian', 'discrete_gaussian' or 'skellam'"
        )
    if num_clients is None or num_clients < 1:
        raise AccountingError(f"mechanism {mechanism!r} needs num_clients >= 1")
    if l1_sensitivity is None:
        raise AccountingError(f"mechanism {mechanism!r} needs the integer-domain l1_sensitivity")
    clients = int(num_clients)
    l2 = float(l2_sensitivity)
    l1 = float(l1_sensitivity)
    if mechanism == "skellam":
        return calibrate_noise(
            lambda z: repeat(
                SkellamSumEvent(
                    mu=max((z * l2) ** 2 / clients, 1e-300),
                    num_clients=clients,
                    l2_sensitivity=l2,
                    l1_sensitivity=l1,
                )
            ),
            target_epsilon=target_epsilon,
            delta=delta,
            accountant=accountant,
            tolerance=tolerance,
        )
    if dimension is None:
        raise AccountingError("mechanism 'discrete_gaussian' needs the dimension")
    dim = int(dimension)
    z_min = 0.5 * math.sqrt(clients) / l2  # sigma >= 1/2 (Kairouz et al. 2021, Thm 1)
    return calibrate_noise(
        lambda z: repeat(
            DiscreteGaussianSumEvent(
                sigma=max(z * l2 / math.sqrt(clients), 0.5),
                num_clients=clients,
                l2_sensitivity=l2,
                l1_sensitivity=l1,
                dimension=dim,
            )
        ),
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        lower=z_min,
        tolerance=tolerance,
    )
