"""Exploration: a small, recorded share of traffic that tells a team what the other tier would do.

A prompt sent to one tier says nothing about the other, so outcomes logged under a router only
ever show the cheap tier on prompts the router already thought easy. With ``exploration`` in the
policy YAML::

    exploration: {share: 0.05, mode: send}     # or mode: shadow

a decision made by the plain tier threshold (rule ``tier_threshold``: never one raised by a task
override, an uncertainty band or a sensitivity gate, and never a blocked or safe decision) is, with
probability ``share``:

* ``send``: sent to the other tier of the (cheap, strong) pair instead;
* ``shadow``: served as decided, and also shadow-called on the other tier (the caller runs the
  shadow call and logs its outcome with ``"shadow": true``; it is never shown to the user).

Every such decision carries ``exploration = {"mode", "share", "explored", "propensity",
"propensities": {tier: P(that tier's outcome is observed)}, "shadow_tier"?}``, so
``classifier.training.feedback`` can weigh each observed outcome by its inverse propensity. The
random draw uses ``random.SystemRandom`` (not reproducible on purpose: nobody can steer which
prompts are explored), or a seeded ``random.Random`` for tests and simulations.

Left out: making the shadow call (the caller's job), and exploring prompts a sensitivity gate
restricted (exploration must never widen where sensitive text may go).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from classifier.errors import PolicyError, TierwiseError, TypedConfig

__all__ = ["MODES", "Exploration"]

MODES = ("send", "shadow")
MAX_SHARE = 0.5


class Exploration(TypedConfig):
    """``share`` of plain threshold decisions explored, ``mode`` send or shadow (module docstring)."""

    _path: ClassVar[str] = "exploration"
    _error: ClassVar[type[TierwiseError]] = PolicyError

    share: float = Field(ge=0.0, le=MAX_SHARE)
    mode: Literal[MODES] = "send"
    seed: int | None = None
    _rng: random.Random = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._rng = random.SystemRandom() if self.seed is None else random.Random(self.seed)

    def apply(self, decision: Any, cheap_tier: str, strong_tier: str, *, models: Mapping[str, str],
              eligible: bool) -> Any:
        """``decision`` (a ``policy.Decision``) with exploration applied and recorded; ``models``
        maps tier names to model names."""
        if self.share <= 0 or not eligible or decision.blocked or decision.tier not in (cheap_tier, strong_tier):
            return decision
        chosen = decision.tier
        other = strong_tier if chosen == cheap_tier else cheap_tier
        explored = self._rng.random() < self.share
        info: dict[str, Any] = {"mode": self.mode, "share": self.share, "explored": explored}
        if self.mode == "send":
            served = other if explored else chosen
            info["propensities"] = {chosen: 1.0 - self.share, other: self.share}
            info["propensity"] = info["propensities"][served]
            if explored:
                return replace(decision, tier=served, model=models.get(served, decision.model),
                               reason=f"{decision.reason}; exploration: sent to {served} (share {self.share:g})",
                               exploration=info)
            return replace(decision, exploration=info)
        info["propensities"] = {chosen: 1.0, other: self.share}
        info["propensity"] = 1.0
        if explored:
            info["shadow_tier"] = other
        return replace(decision, exploration=info)
