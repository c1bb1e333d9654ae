"""Options of the ``svd`` accelerate method (a pydantic model; the recipe reference is generated from it)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

RANK_OPTIONS = ("rank", "rank_ratio", "energy", "mac_ratio")


class SVDOptions(BaseModel):
    """Settings of the ``svd`` decomposition method."""

    model_config = ConfigDict(extra="forbid")

    factorization: Literal["auto", "weight", "spatial"] = Field(
        "weight", validation_alias=AliasChoices("factorization", "kind"),
        description="conv factorization: 'weight' (KxK with r filters then 1x1, AIMET's weight SVD), "
                    "'spatial' (Kx1 then 1xK; convs with a 1-wide kernel and Conv1d use weight) or 'auto' "
                    "(per layer, fewer MACs at the rank, or less error at the MAC budget with mac_ratio); "
                    "Linear layers always become two Linears. 0.1's spelling kind: channel still validates")
    rank: int | None = Field(None, ge=1, description="fixed rank (per group) for every layer, capped at full rank")
    rank_ratio: float = Field(
        0.5, gt=0, le=1, json_schema_extra={"strength": "lower"},
        description="kept fraction of each layer's full rank; used when rank, energy and mac_ratio are "
                    "not given (lower is stronger)")
    energy: float | None = Field(
        None, gt=0, le=1,
        description="per layer, the smallest rank whose singular values hold this fraction of the "
                    "squared spectrum (of the output, with data_aware)")
    mac_ratio: float | None = Field(
        None, gt=0, le=1,
        description="MACs after / before to reach; ranks are spread over the layers where the least "
                    "normalized energy is lost per MAC saved")
    sensitivity: bool = Field(
        False,
        description="with mac_ratio: weigh each layer's spectrum by its measured effect on the model's output "
                    "(one extra forward pass per layer on the example inputs), so the budget goes where the "
                    "output changes least")
    mac_scope: Literal["model", "targets"] = Field(
        "model", description="what mac_ratio is a fraction of: the whole model's MACs or the targeted layers'")
    rank_multiple: int = Field(
        1, ge=1, le=256, description="round ranks to multiples of this (8 suits SIMD kernels); full rank stays")
    data_aware: bool = Field(
        False, description="minimise each layer's output error on calibration activations (whitening as "
                           "in SVD-LLM) instead of the weight error")
    update: bool = Field(
        False,
        description="data_aware: once ranks are chosen, refit each Linear inside the model's repeated blocks in "
                    "forward order to the dense model's outputs from the inputs the already factorized layers "
                    "produce (closed-form least squares, then SVD-LLM truncation of the result); memory: two "
                    "copies of one block's calibration activations")
    match: Literal["stream", "dense"] = Field(
        "stream",
        description="update: what each refitted layer reproduces from the factorized model's inputs: 'dense' "
                    "the dense model's outputs of that layer; 'stream' as 'dense', and a layer whose output is "
                    "added into the residual stream (attention output, last MLP projection; found by probing) "
                    "also takes out the residual's drift at that sum (same as magnitude's 'match')")
    update_damping: float = Field(
        1.0, gt=0, le=100,
        description="update: ridge pulling the refitted weights toward the originals, relative to the mean input "
                    "energy; small values fit the calibration text closely, large ones keep more of the original "
                    "(on MiniLM, 0.3 and 3 gave alike cosines on other text; 0.01 overfit the calibration text; with "
                    "random_tokens 1.0, 0.1 did best)")
    update_epochs: int = Field(
        0, ge=0, le=100,
        description="update: after each block's closed-form refit, this many passes of Adam over the calibration "
                    "batches fitting the block's factors to the dense block's outputs (the residual stream), so the "
                    "block's nonlinearities are fitted too; 0 keeps the closed form alone (MiniLM, with "
                    "random_tokens 1 and update_damping 0.1: cosine on text from other sources 0.860 -> 0.880 at 5 "
                    "epochs, 0.884 at 10, in 2.4x / 3.5x the time)")
    update_lr: float = Field(
        3e-4, gt=0, le=1,
        description="update_epochs: Adam's learning rate (on MiniLM 1e-3 did worse on other text than 3e-4)")
    random_tokens: float = Field(
        0.0, ge=0, le=4,
        description="data_aware, token-id models: add this many batches of random tokens per calibration batch, "
                    "each a copy of a real one whose tokens are drawn uniformly from the model's vocabulary, so "
                    "the factors also keep directions the calibration text never excites (MiniLM, 1.0 with "
                    "update_damping 0.1: cosine on text from other sources 0.819 -> 0.860, on the calibration "
                    "sources 0.912 -> 0.913)")
    calibration_batches: int = Field(
        32, ge=1, le=10_000,
        description="batches of train data used to gather activations when data_aware (Gram matrices are summed "
                    "batch by batch: more batches cost time, not memory, except update's block activations)")
    damping: float = Field(
        0.01, gt=0, le=10,
        description="data_aware ridge, relative to the mean activation energy; larger blends toward plain SVD")
    measure_latency: bool = Field(
        True, description="time every factorized layer against the original on its real input shape and "
                          "keep the original when the factors are not min_speedup times faster")
    min_speedup: float = Field(
        1.0, ge=0, le=100,
        description="with measure_latency, keep factors only at this layer speedup or more (0 keeps all)")
    min_realized: float = Field(
        0.0, ge=0, le=1,
        description="with measure_latency, keep factors only when the layer's measured speedup is at least "
                    "this fraction of its MAC cut (0: only min_speedup applies); with mac_ratio such a layer "
                    "is cut less and the budget moves to layers where fewer MACs really mean less time")
    latency_runs: int = Field(
        10, ge=1, le=1000,
        description="timed runs per layer and version, interleaved; the best run counts (least disturbed)")
    latency_table: bool = Field(
        True,
        description="reuse this machine's layer timings (latency.json in the cache folder, keyed by CPU, torch "
                    "version, threads, layer shapes and input shape): measured once, so later runs take the same "
                    "keep-or-revert decisions on a quiet or a busy machine; false measures afresh every run")
    runtime: str | None = Field(
        None,
        description="with measure_latency, time each layer and its factors in this deploy method's runtime "
                    "(e.g. onnxruntime, torchscript), where the model will run, instead of eager PyTorch")
    spread_by: Literal["macs", "latency"] = Field(
        "macs",
        description="with mac_ratio, what a cut is weighed against: normalized energy lost per MAC saved "
                    "('macs', the same ranks on every machine) or per millisecond saved, from each layer's "
                    "factors timed at two ranks on its real input ('latency', needs measure_latency): the "
                    "budget then goes to layers where fewer MACs really run faster")

    @model_validator(mode="before")
    @classmethod
    def _old_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" in data:
            warnings.warn("svd option 'kind' is now 'factorization'", DeprecationWarning, stacklevel=2)
        return data

    @field_validator("factorization", mode="before")
    @classmethod
    def _old_value(cls, value: Any) -> Any:
        """0.1's ``kind: channel`` is ``factorization: weight`` (deprecated spelling, removed in 0.3)."""
        if value == "channel":
            warnings.warn("svd: factorization (formerly kind) 'channel' is now 'weight'", DeprecationWarning,
                          stacklevel=2)
            return "weight"
        return value

    @model_validator(mode="after")
    def _one_rank_rule(self) -> "SVDOptions":
        given = [name for name in RANK_OPTIONS if name in self.model_fields_set and getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of rank, rank_ratio, energy or mac_ratio, not {' and '.join(given)}")
        if self.random_tokens and not self.data_aware:
            raise ValueError(f"random_tokens={self.random_tokens} adds calibration batches: set data_aware: true "
                             f"too, or random_tokens: 0")
        if self.update and not self.data_aware:
            raise ValueError("update=true refits factors on calibration activations: set data_aware: true too")
        if self.update_epochs and not self.update:
            raise ValueError(f"update_epochs={self.update_epochs} fits the blocks after update's closed-form refit: "
                             f"set update: true too, or update_epochs: 0")
        if self.spread_by == "latency" and (self.mac_ratio is None or not self.measure_latency):
            raise ValueError("spread_by='latency' spreads a mac_ratio budget by measured layer times: give "
                             "mac_ratio and keep measure_latency true, or use spread_by='macs'")
        return self

    @property
    def rank_rule(self) -> str:
        """Which rank option decides: the one given, else ``rank_ratio``."""
        for name in ("rank", "energy", "mac_ratio"):
            if getattr(self, name) is not None:
                return name
        return "rank_ratio"
