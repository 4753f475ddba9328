"""A deterministic drop plan: which client goes silent at which stage of which aggregation.

``{aggregation: {client name: stage}}``: in aggregation ``v`` (the server model version
being built) the named client answers nothing from ``stage`` on. Stages are the
protocol's: SecAgg ``"advertise"``, ``"share_keys"``, ``"check_shares"``,
``"masked_input"``, ``"consistency"``, ``"unmask"``; CKKS and plain ``"upload"``; and
``"train"`` (silent from the training set-up on) for every protocol. Both transports
accept the same plan (the in-process transport instead of its random
``simulation.dropout`` draws; the Flower transport by making the node's ClientApp
silent), so an equivalence test can inject the same dropouts on both.
"""

from __future__ import annotations

from collections.abc import Mapping

from secure_fl.errors import ConfigError

__all__ = ["DropPlan", "STAGE_ORDER", "stage_order"]

STAGE_ORDER: dict[str, tuple[str, ...]] = {
    "secagg": ("train", "advertise", "share_keys", "check_shares", "masked_input", "consistency", "unmask"),
    "ckks": ("train", "upload"),
    "plain": ("train", "upload"),
}
"""Each protocol's stages in order (the in-process transport's ``Exchange.stage`` names)."""


def stage_order(protocol: str, stage: str) -> int | None:
    """Position of ``stage`` in ``protocol`` (``None``: not a stage one can drop at)."""
    order = STAGE_ORDER.get(protocol, ())
    return order.index(stage) if stage in order else None


class DropPlan:
    """A validated ``{aggregation: {client name: stage}}`` mapping."""

    def __init__(self, plan: Mapping[int, Mapping[str, str]], *, protocol: str) -> None:
        self.protocol = protocol
        self._plan: dict[int, dict[str, int]] = {}
        for version, members in plan.items():
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ConfigError(f"drop plan: aggregation {version!r} is not an integer >= 1")
            for name, stage in members.items():
                pos = stage_order(protocol, stage)
                if pos is None:
                    raise ConfigError(
                        f"drop plan: {stage!r} is not a stage of protocol {protocol!r} "
                        f"(one of {', '.join(STAGE_ORDER.get(protocol, ()))})"
                    )
                self._plan.setdefault(version, {})[str(name)] = pos

    def silent(self, version: int, name: str, stage: str) -> bool:
        """Whether ``name`` stays silent at ``stage`` of aggregation ``version``."""
        pos = stage_order(self.protocol, stage)
        at = self._plan.get(version, {}).get(name)
        return pos is not None and at is not None and pos >= at

    def as_dict(self) -> dict[int, dict[str, str]]:
        order = STAGE_ORDER[self.protocol]
        return {v: {n: order[p] for n, p in m.items()} for v, m in self._plan.items()}
