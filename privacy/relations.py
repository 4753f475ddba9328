"""Neighbouring relations of the client-level guarantee, and events under each.

Every epsilon secure-fl reports names its neighbouring relation (two datasets are
neighbours when they differ in one *unit*, here one client's contribution to one
aggregation):

* ``"zero-out"`` (the headline, :data:`ZERO_OUT`): the target client's clipped update
  is replaced by the zero vector; the client still takes part, so its noise share stays
  in the sum and the number of shares does not change. Sensitivity: the clip bound
  ``C`` (integer domain: ``Delta_2 = sqrt(B)``, ``Delta_1``). This is the relation the
  distributed mechanisms are accounted under (Kairouz, Liu, Steinke, ICML 2021,
  Sec. 2; the "replace with a special element" relation of dp_accounting).
* ``"replace-one"`` (:data:`REPLACE_ONE`): the target's update is replaced by any other
  update of norm ``<= C``. The difference of two such vectors has norm ``<= 2 C``
  (triangle inequality; in the integer domain ``<= 2 sqrt(B)`` and ``<= 2 Delta_1``), so
  :func:`replace_one_event` doubles every sensitivity and halves the Gaussian noise
  multiplier. The number of noise shares is unchanged.
* Strict add/remove (the target and its noise share leave the sum) is *not* reported
  for the distributed mechanisms: the variance of the sum then reveals how many shares
  it holds, and no bound of that form is used here.
"""

from __future__ import annotations

from privacy.events import (
    ComposedEvent,
    DiscreteGaussianSumEvent,
    DPEvent,
    GaussianEvent,
    NonPrivateEvent,
    NoOpEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    SkellamSumEvent,
)

__all__ = ["REPLACE_ONE", "ZERO_OUT", "replace_one_event"]

ZERO_OUT = "zero-out"
"""The target client's update is replaced by zero; its noise share stays."""

REPLACE_ONE = "replace-one"
"""The target client's update is replaced by any other update of norm at most C."""


def replace_one_event(event: DPEvent) -> DPEvent:
    """``event`` re-stated for the replace-one relation: every sensitivity doubled.

    ``GaussianEvent(z)`` becomes ``GaussianEvent(z / 2)`` (the multiplier is noise std
    over sensitivity); the discrete sum events keep their noise and double
    ``l2_sensitivity`` and ``l1_sensitivity``. Composite events are mapped recursively.
    """
    if isinstance(event, NoOpEvent | NonPrivateEvent):
        return event
    if isinstance(event, GaussianEvent):
        return GaussianEvent(noise_multiplier=event.noise_multiplier / 2.0)
    if isinstance(event, DiscreteGaussianSumEvent):
        return DiscreteGaussianSumEvent(
            sigma=event.sigma,
            num_clients=event.num_clients,
            l2_sensitivity=2.0 * event.l2_sensitivity,
            l1_sensitivity=2.0 * event.l1_sensitivity,
            dimension=event.dimension,
        )
    if isinstance(event, SkellamSumEvent):
        return SkellamSumEvent(
            mu=event.mu,
            num_clients=event.num_clients,
            l2_sensitivity=2.0 * event.l2_sensitivity,
            l1_sensitivity=2.0 * event.l1_sensitivity,
        )
    if isinstance(event, PoissonSampledEvent):
        return PoissonSampledEvent(event.sample_rate, replace_one_event(event.event))
    if isinstance(event, SelfComposedEvent):
        return SelfComposedEvent(replace_one_event(event.event), event.count)
    if isinstance(event, ComposedEvent):
        return ComposedEvent(tuple(replace_one_event(e) for e in event.events))
    raise TypeError(f"unknown DP event type {type(event).__name__}")
