"""Options of the ``magnitude`` compress method (a pydantic model; the recipe reference is generated from it)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class MagnitudeOptions(BaseModel):
    """Options of the ``magnitude`` compress method."""

    model_config = ConfigDict(extra="forbid")

    sparsity: float = Field(
        0.5, ge=0, lt=1, json_schema_extra={"strength": True},
        description="fraction of the targeted weights to zero, in [0, 1); 0 changes nothing. With "
                    "pattern 'structured' the fraction of output rows/channels. Ignored when 'threshold' is set.",
    )
    threshold: float | None = Field(
        None, ge=0,
        description="zero every weight whose score is below this value instead of a fixed fraction "
                    "(score = |w|, or |w| x input norm with criterion 'activation'; row norm when structured)",
    )
    scope: Literal["layer", "global", "row"] = Field(
        "layer",
        description="where weights compete: 'layer' (each tensor pruned to the sparsity), 'global' (all "
                    "targeted weights ranked together) or 'row' (each output row separately, as Wanda)",
    )
    pattern: str = Field(
        "unstructured",
        description="'unstructured' (single weights), 'N:M' such as '2:4' (keep N of every M consecutive "
                    "weights along the input dimension) or 'structured' (whole output rows/channels)",
    )
    norm: Literal["l1", "l2"] = Field("l2", description="row norm ranking output rows when pattern is 'structured'")
    criterion: Literal["weight", "activation"] = Field(
        "weight",
        description="'weight': |w|; 'activation': |w| times the L2 norm of its input over calibration "
                    "batches (Wanda); Linear and Conv layers, others fall back to |w|",
    )
    reconstruct: bool = Field(
        False,
        description="update the kept weights by least squares on the calibration inputs (SparseGPT's column "
                    "sweep); Linear, transformers' Conv1D, Conv1d and ungrouped Conv2d layers",
    )
    selection: Literal["sweep", "admm", "score"] = Field(
        "sweep",
        description="reconstruct: 'sweep' chooses the mask inside the least-squares sweep from the weights the "
                    "earlier columns already updated, by the output error each zero costs (SparseGPT's own "
                    "selection; per block of 128 columns, per group with N:M); 'admm' chooses it by gradual ADMM "
                    "(Boža 2024: the zeroed share ramps up over admm_steps least-squares steps and zeros may come "
                    "back; best quality, about 3-4x the sweep's time; Linear and Conv1D layers, conv layers use "
                    "'sweep'); 'score' prunes what the criterion chose and only updates the kept weights. "
                    "Thresholds and structured patterns always use 'score'",
    )
    update: Literal["exact", "sweep"] = Field(
        "exact",
        description="reconstruct: how the kept weights are updated once the mask is fixed: 'exact' solves their "
                    "least squares (conjugate gradients, all rows at once); 'sweep' keeps SparseGPT's one-pass "
                    "compensation, where a zero is compensated only by the columns to its right (0.2's behaviour)",
    )
    match: Literal["stream", "dense", "layer"] = Field(
        "stream",
        description="reconstruct, sequential by blocks: what each layer's updated weights reproduce on the pruned "
                    "model's inputs: 'layer' its own outputs (SparseGPT; the drift already in its inputs stays); "
                    "'dense' the dense model's outputs of that layer, from a dense copy of the calibration "
                    "activations run beside the pruned one (asymmetric calibration, GPTAQ); 'stream' as 'dense', "
                    "and a layer whose output is added into the residual stream (attention output, last MLP "
                    "projection; found by probing) also takes out the residual's drift at that sum. Layers are "
                    "then pruned group by group inside each block (q/k/v, attention output, MLP in, MLP out). "
                    "Needs update 'exact'; without repeated blocks, 'layer' is used",
    )
    admm_steps: int = Field(60, ge=3, le=1000, description="selection 'admm': least-squares steps per layer")
    allocation: Literal["uniform", "sensitivity", "owl"] = Field(
        "uniform",
        description="per-tensor sparsity with scope 'layer' or 'row': 'uniform' (every tensor at the target), "
                    "'sensitivity' (measured: each tensor's output error at a few sparsities and the model's "
                    "output change with that tensor alone pruned; more sparsity where it costs least, the "
                    "weighted mean at the target, each within +-0.3 of it and within min/max_sparsity) or 'owl' "
                    "(per repeated block, less sparsity where activation outliers are more frequent; Yin et al. "
                    "2023, lambda 0.08, M 5). Needs calibration batches",
    )
    damp: float = Field(0.1, gt=0, le=10,
                        description="reconstruct: ridge added to the input Gram matrix, relative to its mean diagonal")
    sequential: bool = Field(
        True,
        description="reconstruct: prune in forward order, each layer calibrated on the outputs of the layers "
                    "already pruned (as SparseGPT): block by block for models built of repeated blocks "
                    "(transformers; memory: the model plus one block's calibration activations, those beyond "
                    "$TORCHSLIM_CALIBRATION_MB, default 1024, kept in a temporary folder), else layer group "
                    "by group; off: all layers from the unpruned model's inputs",
    )
    calibration_batches: int = Field(
        32, ge=1, description="training batches used for activation statistics (summed batch by batch: more "
                              "batches cost time, not memory; under torchrun each rank reads its share)")
    random_tokens: float = Field(
        0.0, ge=0, le=4,
        description="token-id models: add this many batches of random tokens per calibration batch, each a copy "
                    "of a real one whose tokens are drawn uniformly from the model's vocabulary, so scores and "
                    "reconstruction also see directions the calibration text never excites (MiniLM 2:4 ADMM, 1.0: "
                    "cosine on text from other sources 0.887 -> 0.910, on the calibration sources 0.951 -> 0.947)")
    min_sparsity: float = Field(0.0, ge=0, lt=1, description="lowest sparsity any single tensor may end with")
    max_sparsity: float = Field(1.0, gt=0, le=1, description="highest sparsity any single tensor may end with")
    rounds: int = Field(1, ge=1, le=100,
                        description="prune in this many rounds on the cubic schedule of Zhu & Gupta (1 = one-shot)")
    between: dict[str, Any] | None = Field(
        None,
        description="fine-tune step run after every round but the last, e.g. {method: sgd, epochs: 1}",
    )
    include_bias: bool = Field(False, description="prune biases too (structured: the biases of removed rows)")
    allow_empty_layers: bool = Field(
        False,
        description="let a tensor lose every weight; otherwise sparsity targets keep at least one weight "
                    "per tensor (per row with scope 'row') and a threshold that empties a tensor is an error",
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("unstructured", "structured"):
            return value
        match = _NM.match(value)
        if match and 0 < int(match.group(1)) < int(match.group(2)):
            return f"{int(match.group(1))}:{int(match.group(2))}"
        raise ValueError(f"pattern={value!r} must be 'unstructured', 'structured' or 'N:M' with 0 < N < M (e.g. '2:4')")

    @field_validator("between")
    @classmethod
    def _between(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        body = value.get("finetune", value) if len(value) == 1 else value
        if not isinstance(body, dict) or "method" not in body:
            raise ValueError("between must be a fine-tune step such as {method: sgd, epochs: 1}")
        return dict(body)

    @model_validator(mode="after")
    def _consistent(self) -> "MagnitudeOptions":
        given = self.model_fields_set
        if self.threshold is not None and "sparsity" in given:
            raise ValueError("give either sparsity or threshold, not both")
        if self.random_tokens and not self.needs_calibration:
            raise ValueError(f"random_tokens={self.random_tokens} adds calibration batches, but nothing calibrates: "
                             f"use criterion 'activation' or reconstruct, or random_tokens: 0")
        if self.min_sparsity > self.max_sparsity:
            raise ValueError(f"min_sparsity={self.min_sparsity} is above max_sparsity={self.max_sparsity}")
        nm = self.n_of_m
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.threshold is not None:
                raise ValueError(f"pattern {self.pattern} fixes the sparsity; remove threshold")
            if "sparsity" in given and abs(self.sparsity - implied) > 1e-9:
                raise ValueError(f"pattern {self.pattern} means sparsity {implied:g}; remove sparsity or set it to that")
            if self.rounds > 1:
                raise ValueError(f"pattern {self.pattern} is reached in one step; rounds must be 1")
        if self.pattern == "structured" and self.scope == "row":
            raise ValueError("scope 'row' ranks weights inside a row; with pattern 'structured' use 'layer' or 'global'")
        if self.rounds > 1 and self.threshold is not None:
            raise ValueError("rounds > 1 follows a sparsity schedule; use sparsity instead of threshold")
        if self.between is not None and self.rounds == 1:
            raise ValueError("between runs between rounds; set rounds > 1 or remove it")
        if self.update == "sweep" and "match" in given and self.match != "layer":
            raise ValueError(f"match {self.match!r} is solved by the exact update; set update 'exact' or match 'layer'")
        if self.allocation != "uniform":
            if self.pattern != "unstructured" or self.scope == "global" or self.threshold is not None:
                raise ValueError(f"allocation {self.allocation!r} spreads a sparsity target over tensors: use it "
                                 f"with pattern 'unstructured', scope 'layer' or 'row' and sparsity (not threshold)")
        return self

    @property
    def n_of_m(self) -> tuple[int, int] | None:
        """``(N, M)`` for an N:M pattern, else None."""
        match = _NM.match(self.pattern)
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def needs_calibration(self) -> bool:
        return self.criterion == "activation" or self.reconstruct or self.allocation != "uniform"

    @property
    def paired(self) -> bool:
        """Whether sequential reconstruction runs a dense stream beside the pruned one (``match`` not 'layer')."""
        return self.reconstruct and self.sequential and self.update == "exact" and self.match != "layer"

    @property
    def needs_gram(self) -> bool:
        """Whether the input Gram matrices are needed (reconstruction, or measuring errors to allocate)."""
        return self.reconstruct or self.allocation == "sensitivity"

    @property
    def sweeps(self) -> bool:
        """Whether masks are chosen inside the reconstruction sweep."""
        return (self.reconstruct and self.selection in ("sweep", "admm") and self.threshold is None
                and self.pattern != "structured")
