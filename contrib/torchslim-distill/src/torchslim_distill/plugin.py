"""The ``distill`` fine-tuning method: the compressed student learns from the run's original model.

Loss per batch::

    task_weight * task_loss(student, labels)
  + kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))       (Hinton et al., 2015)
  + feature_weight * mean over matched modules of mean((student out - teacher out)^2) / scale

where ``scale`` is the teacher output's mean square on the first batch (see :func:`feature_scales`).

The teacher is ``context.original_model``: the user's model before any step, in eval mode with
gradients off; it is only ever read. Training (optimizer, schedule, epochs or steps, warm-up,
gradient clipping, seeding, distributed data parallel) is torchslim's shared loop
:func:`torchslim.training.fit`, with the same options as the built-in ``sgd`` method
(:class:`torchslim.training.TrainingOptions`); this plugin supplies only the loss.

The defaults (T=1, all three weights on, ``features: auto``) were chosen on the digits CNN at 90 % and
95 % sparsity with seeds 100-109; ``bench/distill.py`` reports them on seeds 0-9 (see the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

import torchslim
from torchslim import distributed
from torchslim.batches import first_tensor
from torchslim.datacheck import logits_of
from torchslim.training import TrainingOptions, fit, task_loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` over the class dim 1, averaged over the rest.

    >>> x = torch.randn(4, 10)
    >>> float(kd_loss(x, x, 4.0))
    0.0
    """
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    return kl.mean() * temperature**2


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Relative squared error ``mean((student - teacher)^2) / scale``, in float32.

    ``scale`` defaults to the teacher's mean square, ``mean(teacher^2)``: dividing by it weighs every
    matched layer alike, whatever its scale (a convolution's output before its BatchNorm is often 10x
    larger than after). The result is 0 when they agree and 1 when the student outputs zeros. The
    ``distill`` step passes a scale it fixed per layer on the first batch, so the loss is a plain mean
    over the batch's samples (which distributed data parallel training needs).

    >>> t = torch.randn(2, 3, 4, 4)
    >>> float(feature_loss(torch.zeros_like(t), t))
    1.0
    """
    teacher = teacher.detach().float()
    if scale is None:
        scale = teacher.pow(2).mean()
    return F.mse_loss(student.float(), teacher) / scale.clamp_min(1e-12)


def feature_scales(teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean square of each of the teacher's outputs, over the whole batch on all ranks.

    Under distributed training every rank must call it with the same names; each rank contributes its
    shard, so every rank gets the scale one process would compute on the global batch. A layer whose
    outputs are all zero gets scale 1 (plain squared error) instead of dividing by zero.
    """
    names = list(teacher)
    if not names:
        return {}
    squares = torch.stack([teacher[n].detach().double().pow(2).sum() for n in names])
    counts = torch.tensor([float(teacher[n].numel()) for n in names], dtype=torch.float64, device=squares.device)
    squares, counts = distributed.all_reduce_sum(torch.stack([squares, counts])).unbind(0)
    means = squares / counts
    means = torch.where(means > 0, means, torch.ones_like(means)).float()
    return dict(zip(names, means.unbind(0)))


class DistillOptions(TrainingOptions):
    """Settings of ``distill``: every option of ``sgd``, plus the weights of the distillation loss."""

    # T=1: with a teacher that is nearly always right on its training data, T=4 (Hinton's CIFAR
    # setting) turns the KL into regression onto its logits, which slowed recovery after pruning
    # (README, "Why these defaults": `bench/distill.py --first-seed 100 --seeds 10 --ablation`).
    temperature: float = Field(
        1.0, gt=0, le=100, description="softmax temperature of the KL term; higher shares more of the "
                                       "teacher's ranking of the wrong classes")
    # 1 and 1: switching from sgd keeps the whole task gradient and adds the teacher's; weights summing
    # to 1 (0.5/0.5) recovered much less within a short budget (same table)
    kd_weight: float = Field(
        1.0, ge=0, le=100, description="weight of the KL term to the teacher's logits (already scaled by T^2)")
    task_weight: float = Field(
        1.0, ge=0, le=100, description="weight of the task loss on the labels (loss_fn, or cross-entropy); "
                                       "0 ignores the labels (unlabelled train_data is then fine)")
    features: list[str] | Literal["auto"] = Field(
        "auto",
        description="modules whose outputs the student matches to the teacher's: 'auto' (every leaf module "
                    "with parameters, e.g. conv, linear, norm layers, whose output has the same shape in both "
                    "models, except the one giving the logits), a list of names as in model.named_modules() "
                    "(their shapes must agree), or [] for none")
    feature_weight: float = Field(
        5.0, ge=0, le=1000, description="weight of the mean relative squared error of the matched features")

    @model_validator(mode="after")
    def _some_loss(self) -> "DistillOptions":
        if self.kd_weight == 0 and self.task_weight == 0 and not (self.features and self.feature_weight):
            raise ValueError("kd_weight, task_weight and feature_weight (with features) are all 0: nothing to learn")
        return self


@dataclass
class _Run:
    """What one ``distill`` step keeps between batches: captured features and the loss terms."""

    names: list[str] = field(default_factory=list)  # the modules hooked in both models
    student: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    matched: dict[str, None] = field(default_factory=dict)  # an ordered set of the modules matched
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # per module, fixed on its first batch
    terms: list[dict[str, float]] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)

    def capture(self, module: nn.Module, name: str, into: dict[str, torch.Tensor]) -> None:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            into[name] = first_tensor(output)

        self.handles.append(module.register_forward_hook(hook))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _module(model: nn.Module, name: str, role: str, where: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n and ".parametrizations" not in n]
        close = [n for n in names if n.split(".")[-1] == name.split(".")[-1]][:5] or names[:8]
        raise torchslim.RecipeError(
            f"{where}: features names {name!r}, which the {role} model does not have; module names look "
            f"like {', '.join(close)}") from None


def auto_features(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Names of the leaf modules with parameters that both models have (candidates of ``features: auto``).

    A module counts as a leaf when its only child is a ``parametrizations`` container (a pruning mask),
    so masked layers qualify. Modules without parameters (activations, pooling, dropout) are left out:
    their outputs repeat a neighbour's, or differ between the student (training) and teacher (eval).
    """
    in_teacher = {name for name, _ in teacher.named_modules()}
    return [name for name, module in student.named_modules()
            if name and ".parametrizations" not in name and name in in_teacher
            and all(child == "parametrizations" for child, _ in module.named_children())
            and any(True for _ in module.parameters())]


class Distillation:
    """Fine-tune against the run's original model: task loss, KL to its logits and its layers' outputs.

    Trains with torchslim's shared loop and the ``sgd`` method's options; only the loss differs. The
    torchslim-distill README gives the loss and the reasons for the defaults.
    """

    name = "distill"
    Options = DistillOptions

    @torchslim.hookimpl
    def finetune(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        opts: DistillOptions = step.options
        where = f"finetune/{step.method}"
        teacher = context.original_model
        if teacher is None:
            raise torchslim.ModelError(f"{where} needs a teacher: run it through torchslim.Engine, which hands "
                                       f"the original model to the step as context.original_model")
        names = auto_features(model, teacher) if opts.features == "auto" else list(opts.features)
        run = _Run(names=names if opts.feature_weight else [])
        try:
            for name in run.names:
                run.capture(_module(model, name, "compressed", where), name, run.student)
                run.capture(_module(teacher, name, "original (teacher)", where), name, run.teacher)
            info = fit(model, context, opts, where,
                       loss=lambda net, inputs, target, at: self.loss(run, net, inputs, target, context, opts, at))
        finally:
            run.close()
        result = torchslim.StepResult(model=model, info=info)
        last = run.terms[-10:]
        result.info["distill"] = {
            "temperature": opts.temperature, "kd_weight": opts.kd_weight, "task_weight": opts.task_weight,
            "feature_weight": opts.feature_weight, "features": list(run.matched),
            "final_terms": {key: sum(t[key] for t in last) / len(last) for key in (last[0] if last else {})},
        }
        return result

    def train_longer(self, options: DistillOptions, factor: float) -> DistillOptions:
        """The same options, training about ``factor`` times as long (the search's back-off)."""
        return options.longer(factor)

    def loss(self, run: _Run, model: nn.Module, inputs: Any, target: Any, context: Any, opts: DistillOptions,
             where: str) -> torch.Tensor:
        """One batch's loss: the weighted task, KL and feature terms (each recorded in ``run.terms``)."""
        run.student.clear()
        run.teacher.clear()
        output = context.forward(model, inputs, where)
        with torch.no_grad():
            teacher_output = context.forward(context.original_model, inputs, where)
        student_logits = logits_of(output, where)
        teacher_logits = logits_of(teacher_output, where)
        if student_logits.shape != teacher_logits.shape:
            raise torchslim.ModelError(
                f"{where}: the compressed model's logits {tuple(student_logits.shape)} differ from the teacher's "
                f"{tuple(teacher_logits.shape)}; distillation needs the same output shape")
        terms: dict[str, torch.Tensor] = {}
        if opts.kd_weight:
            terms["kd"] = opts.kd_weight * kd_loss(student_logits, teacher_logits.detach(), opts.temperature)
        if opts.task_weight:
            terms["task"] = opts.task_weight * task_loss(output, target, context, where, opts.label_smoothing)
        if run.names:
            matched = self._matched_features(run, opts.features == "auto", student_logits, where)
            if matched:
                run.matched.update(dict.fromkeys(matched))
                new = [n for n in matched if n not in run.scales]
                if new:  # fixed from then on: a batch-dependent scale would make the loss no plain mean
                    run.scales.update(feature_scales({n: run.teacher[n] for n in new}))
                terms["features"] = opts.feature_weight * torch.stack(
                    [feature_loss(run.student[n], run.teacher[n], run.scales[n]) for n in matched]).mean()
        run.terms.append({key: float(term.detach()) for key, term in terms.items()})
        return sum(terms.values())

    @staticmethod
    def _matched_features(run: _Run, auto: bool, logits: torch.Tensor, where: str) -> list[str]:
        """The captured modules to match in this batch; with explicit names, every one or an error."""
        if auto:  # outputs that ran and agree in shape, except the logits (the KL term has them)
            pairs = [(n, run.student.get(n), run.teacher.get(n)) for n in run.names]
            return [n for n, s, t in pairs if s is not None and t is not None and s.shape == t.shape
                    and s.data_ptr() != logits.data_ptr()]
        for name in run.names:
            student, teacher = run.student.get(name), run.teacher.get(name)
            if student is None or teacher is None:
                raise torchslim.ModelError(f"{where}: module {name!r} did not run (or returned no tensor) in the "
                                           f"forward pass; choose modules the forward pass calls")
            if student.shape != teacher.shape:
                raise torchslim.ModelError(
                    f"{where}: feature {name!r} has shape {tuple(student.shape)} in the compressed model but "
                    f"{tuple(teacher.shape)} in the teacher; matching needs equal shapes (a method that removes "
                    f"channels changes them): pick another module, drop it from features, or use 'auto'")
        return run.names
