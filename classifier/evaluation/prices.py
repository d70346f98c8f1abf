"""Per-model token prices and the cost of routing each row to a tier. The shipped table is
``classifier/evaluation/prices.yaml`` (``DEFAULT_PRICES_PATH``: package data, read through
``importlib.resources``).

What is here: ``Prices`` (loaded and validated from YAML or a dict), ``Prices.check_models`` (every
model a data set names must have a price) and ``row_costs``: for each row, the USD cost of sending
it to its ``cheap_model`` and to its ``frontier_model``,
``(input_tokens * input_per_million + output_tokens * output_per_million) / 1e6``.

What is left out: how costs are aggregated into curves and savings (``classifier.evaluation.costs``),
currency conversion, cached-token or batch discounts, and per-request minimums. A row without a
model or without token counts (e.g. a sensitivity-only row) gets a NaN cost; callers drop it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from classifier.errors import ConfigError, DataError, from_validation
from classifier.yaml_io import read_yaml

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

TIERS = ("cheap", "frontier")
# the shipped price table; pip unpacks wheels, so it is a real file
DEFAULT_PRICES_PATH = Path(str(files("classifier.evaluation").joinpath("prices.yaml")))

__all__ = ["DEFAULT_PRICES_PATH", "ModelPrice", "Prices", "row_costs"]


def _amount(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a non-negative number, got {value!r}")
    return float(value)


class ModelPrice(BaseModel):
    """USD per million input / output tokens of one model (or pool), and the tier it serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""  # the key under 'models'
    input_per_million: Annotated[float, BeforeValidator(_amount)]
    output_per_million: Annotated[float, BeforeValidator(_amount)]
    tier: Literal["cheap", "frontier"]
    members: tuple[str, ...] = ()
    description: str = ""

    def cost(self, input_tokens: float | np.ndarray, output_tokens: float | np.ndarray) -> Any:
        """USD for the given token counts (scalars or arrays)."""
        return (np.asarray(input_tokens, dtype=np.float64) * self.input_per_million
                + np.asarray(output_tokens, dtype=np.float64) * self.output_per_million) / 1e6


class Prices(BaseModel):
    """The price table: model name -> ``ModelPrice``. ``source`` names the file in error messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelPrice] = Field(min_length=1)
    currency: str = Field("USD", min_length=1)
    _source: str = PrivateAttr("<dict>")

    @model_validator(mode="before")
    @classmethod
    def _name_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = {**data, "models": {str(k): {**v, "name": str(k)} if isinstance(v, dict) else v
                                       for k, v in data["models"].items()}}
        return data

    @property
    def source(self) -> str:
        return self._source

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> Prices:
        """Validate a price table; ``ConfigError`` names every field at fault and ``source``."""
        try:
            prices = cls.model_validate(data)
        except ValidationError as exc:
            raise from_validation(exc, ConfigError, source) from None
        prices._source = source
        return prices

    @classmethod
    def from_yaml(cls, path: str | Path) -> Prices:
        data = read_yaml(path, ConfigError, "price file", "pass --prices with a valid file")
        return cls.from_dict(data, source=str(path))

    # -- lookup ----------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.models

    def get(self, name: str) -> ModelPrice:
        try:
            return self.models[name]
        except KeyError:
            raise ConfigError(
                f"model {name!r} has no price in {self.source}; add it under 'models' "
                f"(known: {sorted(self.models)})"
            ) from None

    def check_models(self, names: Iterable[str], *, column: str = "model") -> None:
        """Raise ``ConfigError`` naming every model in ``names`` that the price file lacks."""
        unknown = sorted({str(n) for n in names if n is not None and str(n) not in self.models})
        if unknown:
            raise ConfigError(
                f"the data names {column} {unknown} with no price in {self.source}; add them under "
                f"'models' (known: {sorted(self.models)}) or pass --prices with a file that has them"
            )


def _tokens(frame: pd.DataFrame, column: str) -> np.ndarray:
    import pandas as pd

    if column not in frame.columns:
        raise DataError(f"the data has no {column!r} column; costs need input_tokens and output_tokens")
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(values < 0)
    if bad.size:
        row = frame.index[bad[0]]
        row_id = frame.loc[row, "id"] if "id" in frame.columns else row
        raise DataError(f"column {column!r} has {bad.size} negative token counts (first at row {row_id!r})")
    return values


def row_costs(frame: pd.DataFrame, prices: Prices) -> tuple[np.ndarray, np.ndarray]:
    """``(cost_cheap, cost_frontier)``: USD per row for sending it to its cheap / frontier model.

    Raises ``ConfigError`` if a row names a model that ``prices`` lacks. Rows with a null model or
    null token counts get NaN. A model priced under the other tier than the column that names it
    is logged as a warning (it is costed as priced, not refused).
    """
    in_tok = _tokens(frame, "input_tokens")
    out_tok = _tokens(frame, "output_tokens")
    result = []
    for tier in TIERS:
        column = f"{tier}_model"
        cost = np.full(len(frame), np.nan)
        if column not in frame.columns:
            result.append(cost)
            continue
        models = frame[column]
        present = models.notna().to_numpy()
        prices.check_models(models[present].unique(), column=column)
        for name in models[present].unique():
            price = prices.get(str(name))
            if price.tier != tier:
                logger.warning(
                    "%s: model %r is priced as tier %r but the data uses it as %s",
                    prices.source, name, price.tier, column,
                )
            rows = (models == name).to_numpy()
            cost[rows] = price.cost(in_tok[rows], out_tok[rows])
        result.append(cost)
    return result[0], result[1]
