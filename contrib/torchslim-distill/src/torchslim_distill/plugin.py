"""The ``distill`` fine-tuning method: the compressed student learns from the run's original model.

Loss per batch::

    task_weight * task_loss(student, labels)
  + kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))       (Hinton et al., 2015)
  + feature_weight * sum over `features` of MSE(student module output, teacher module output)

The teacher is ``context.original_model``: the user's model before any step, in eval mode with
gradients off; it is only ever read. Training (optimizer, schedule, epochs or steps, warm-up,
gradient clipping, seeding, distributed data parallel) is the built-in ``sgd`` method's, with the
same options: this plugin subclasses :class:`torchslim.plugins.finetune.SGDFinetune` and replaces
only the loss of a training step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator
from torch import nn

import torchslim
from torchslim.batches import first_tensor
from torchslim.datacheck import logits_of
from torchslim.plugins.finetune import SGDFinetune


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


class DistillOptions(SGDFinetune.Options):
    """Settings of ``distill``: every option of ``sgd``, plus the weights of the distillation loss."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(
        4.0, gt=0, le=100, description="softmax temperature of the KL term; higher shares more of the "
                                       "teacher's ranking of the wrong classes")
    # 1 and 1: switching from sgd keeps the whole task gradient and adds the teacher's; weights summing
    # to 1 (0.7/0.3) recovered less within a short budget in bench/distill.py
    kd_weight: float = Field(
        1.0, ge=0, le=100, description="weight of the KL term to the teacher's logits (already scaled by T^2)")
    task_weight: float = Field(
        1.0, ge=0, le=100, description="weight of the task loss on the labels (loss_fn, or cross-entropy); "
                                       "0 ignores the labels (unlabelled train_data is then fine)")
    features: list[str] | Literal["auto"] = Field(
        default_factory=list,
        description="names of modules (as in model.named_modules()) whose outputs the student matches to "
                    "the teacher's by mean squared error; their output shapes must agree")
    feature_weight: float = Field(1.0, ge=0, le=1000, description="weight of the summed feature MSE terms")

    @model_validator(mode="after")
    def _some_loss(self) -> "DistillOptions":
        if self.kd_weight == 0 and self.task_weight == 0 and not (self.features and self.feature_weight):
            raise ValueError("kd_weight, task_weight and feature_weight (with features) are all 0: nothing to learn")
        return self


@dataclass
class _Run:
    """What one ``distill`` step keeps between batches: captured features and the loss terms."""

    student: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
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


class Distillation(SGDFinetune):
    """The ``distill`` fine-tuning method (see the module docstring)."""

    name = "distill"
    Options = DistillOptions

    def __init__(self) -> None:
        self._run: _Run | None = None

    @torchslim.hookimpl
    def finetune(self, model: nn.Module, step: Any, context: Any) -> torchslim.StepResult:
        opts: DistillOptions = step.options
        where = f"finetune/{step.method}"
        teacher = context.original_model
        if teacher is None:
            raise torchslim.ModelError(f"{where} needs a teacher: run it through torchslim.Engine, which hands "
                                       f"the original model to the step as context.original_model")
        run = _Run()
        try:
            for name in _feature_names(model, teacher, opts.features):
                run.capture(_module(model, name, "compressed", where), name, run.student)
                run.capture(_module(teacher, name, "original (teacher)", where), name, run.teacher)
            self._run = run
            result = SGDFinetune.finetune(self, model, step, context)
        finally:
            run.close()
            self._run = None
        last = run.terms[-10:]
        result.info["distill"] = {
            "temperature": opts.temperature, "kd_weight": opts.kd_weight, "task_weight": opts.task_weight,
            "features": list(opts.features),
            "final_terms": {key: sum(t[key] for t in last) / len(last) for key in (last[0] if last else {})},
        }
        return result

    def compute_loss(self, model: nn.Module, inputs: Any, target: Any, context: Any, opts: DistillOptions,
                     where: str) -> torch.Tensor:
        run = self._run
        assert run is not None, "compute_loss runs inside finetune()"
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
            terms["task"] = opts.task_weight * self.task_loss(output, target, context, opts, where)
        if opts.features and opts.feature_weight:
            terms["features"] = opts.feature_weight * self._feature_loss(run, opts.features, where, student_logits)
        run.terms.append({key: float(term.detach()) for key, term in terms.items()})
        return sum(terms.values())

    @staticmethod
    def _feature_loss(run: _Run, names: Any, where: str, logits: torch.Tensor) -> torch.Tensor:
        total, count = None, 0
        auto = names == "auto"
        for name in (list(run.student) if auto else names):
            student, teacher = run.student.get(name), run.teacher.get(name)
            if auto:
                if student is None or teacher is None or student.shape != teacher.shape or student.data_ptr() == logits.data_ptr():
                    continue
            else:
                if student is None or teacher is None:
                    raise torchslim.ModelError(f"{where}: module {name!r} did not run (or returned no tensor) in the "
                                               f"forward pass; choose modules the forward pass calls")
                if student.shape != teacher.shape:
                    raise torchslim.ModelError(
                        f"{where}: feature {name!r} has shape {tuple(student.shape)} in the compressed model but "
                        f"{tuple(teacher.shape)} in the teacher; MSE needs equal shapes (a method that removes "
                        f"channels changes them): pick another module or drop it from features")
            teacher = teacher.detach().float()
            term = F.mse_loss(student.float(), teacher)
            if os.environ.get("DISTILL_NORM", "1") == "1":
                term = term / (teacher.pow(2).mean() + 1e-8)
            total = term if total is None else total + term
            count += 1
        if total is None:
            return logits.new_zeros(())
        return total / count if os.environ.get("DISTILL_MEAN", "1") == "1" else total


def _is_leaf(module: nn.Module) -> bool:
    return all(name == "parametrizations" for name, _ in module.named_children())


def _feature_names(model: nn.Module, teacher: nn.Module, features: Any) -> list[str]:
    if features != "auto":
        return list(features)
    kind = os.environ.get("DISTILL_AUTO", "all")
    teacher_names = {n for n, _ in teacher.named_modules()}
    out = []
    for name, module in model.named_modules():
        if not name or ".parametrizations" in name or name not in teacher_names or not _is_leaf(module):
            continue
        if kind == "bn" and not isinstance(module, (nn.modules.batchnorm._NormBase, nn.Linear)):
            continue
        if kind == "param" and not any(True for _ in module.parameters()):
            continue
        if kind == "conv" and not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        out.append(name)
    return out
