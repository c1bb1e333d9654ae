"""Options of the ``channel`` accelerate method (a pydantic model; the recipe reference is generated from it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .graph import INSTALL_HINT, torch_pruning_available

Ratio = Annotated[float, Field(ge=0, lt=1)]


class ChannelOptions(BaseModel):
    """Settings of the ``channel`` accelerate method."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(
        0.3, ge=0, lt=1, json_schema_extra={"strength": True},
        description="fraction of output channels removed: from every prunable group (scope 'uniform') "
                    "or from all groups ranked together (scope 'global'); MACs fall roughly as (1-ratio)^2")
    mac_ratio: float | None = Field(
        None, gt=0, le=1,
        description="instead of ratio: the fraction of the model's MACs to keep; the channel ratio that "
                    "reaches it is found by bisection (give ratio or mac_ratio, not both)")
    head_ratio: float | None = Field(
        None, ge=0, lt=1,
        description="transformer blocks (BERT, GPT-2, ViT, Llama-style): fraction of attention heads removed "
                    "per block (under grouped-query attention, of key/value groups); default: ratio. "
                    "ratio applies to the MLP width")
    scope: Literal["uniform", "global"] = Field(
        "uniform", description="'uniform': the same ratio in every layer; 'global': rank all channels "
                               "together, so layers lose different fractions")
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field(
        "l2", description="channel ranking: 'l1'/'l2' norm of the filter (summed over coupled layers), "
                          "'bn_scale' |gamma| of the following BatchNorm, 'taylor' |weight x gradient| "
                          "of the task loss on calibration_batches of train_data (needs targets)")
    overrides: dict[str, Ratio] = Field(
        default_factory=dict,
        description="per-layer ratios: {glob on layer names: ratio}, e.g. {'layer4.*': 0.6, "
                    "'layer1.*': 0.0}; a layer matching several globs takes the first")
    round_to: int | None = Field(
        None, ge=1, le=1024,
        description="keep channel counts multiples of this (8 or 16 keeps vectorised kernels fast); "
                    "a layer with fewer channels keeps them all")
    ignore: list[str] = Field(
        default_factory=list,
        description="globs of modules whose output channels are kept (a container keeps everything "
                    "inside it); besides these the layers producing the model output are always kept")
    protect_first: bool = Field(
        True, description="keep the output channels of the first layers (those reading the model "
                          "input, e.g. the stem conv), which are cheap and sensitive")
    max_layer_ratio: float = Field(
        0.9, gt=0, lt=1,
        description="at most this fraction of any one layer's channels is removed (guards 'global' "
                    "scope against emptying a layer)")
    iterative_steps: int = Field(
        1, ge=1, le=100,
        description="reach the ratio in this many equal steps, re-ranking (and, for taylor, "
                    "recomputing gradients) after each")
    finetune_between: dict[str, Any] | None = Field(
        None, description="a fine-tune step run between iterative steps, e.g. {method: sgd, epochs: 1}")
    calibration_batches: int = Field(
        4, ge=1, le=100_000, description="train_data batches whose loss gradients rank channels (taylor)")

    @model_validator(mode="after")
    def _consistent(self) -> "ChannelOptions":
        if self.mac_ratio is not None and "ratio" in self.model_fields_set:
            raise ValueError(f"give ratio ({self.ratio}) or mac_ratio ({self.mac_ratio}), not both")
        if self.scope == "uniform" and self.ratio > self.max_layer_ratio:
            raise ValueError(
                f"ratio={self.ratio} exceeds max_layer_ratio={self.max_layer_ratio}; raise max_layer_ratio")
        if self.finetune_between is not None and not isinstance(self.finetune_between.get("method"), str):
            raise ValueError("finetune_between must name a method, e.g. {method: sgd, epochs: 1}")
        if self.finetune_between is not None and self.iterative_steps < 2:
            raise ValueError("finetune_between needs iterative_steps >= 2 (it runs between steps)")
        if not torch_pruning_available():
            raise ValueError(f"method 'channel' needs Torch-Pruning, which is not installed: {INSTALL_HINT}")
        return self
