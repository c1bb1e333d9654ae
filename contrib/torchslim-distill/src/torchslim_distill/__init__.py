"""torchslim-distill: the ``distill`` fine-tuning method (the run's original model is the teacher).

Installed, it registers itself through the ``torchslim`` entry-point group; a recipe step
``finetune: {method: distill, epochs: 3}`` then trains the compressed model on the task loss plus
KL to the teacher's logits plus the relative squared error between the outputs of the layers the
two models share (conv, linear and norm layers of the same shape, or the modules you name).
"""

from .plugin import Distillation, DistillOptions, auto_features, feature_loss, feature_scales, kd_loss

__version__ = "0.1.0"

__all__ = ["DistillOptions", "Distillation", "auto_features", "feature_loss", "feature_scales", "kd_loss", "__version__"]
