"""torchslim-distill: the ``distill`` fine-tuning method (the run's original model is the teacher).

Installed, it registers itself through the ``torchslim`` entry-point group; a recipe step
``finetune: {method: distill, epochs: 3, temperature: 4}`` then trains the compressed model on
temperature-scaled KL to the teacher's logits plus the task loss, optionally matching intermediate
features of named modules.
"""

from .plugin import Distillation, DistillOptions, kd_loss

__version__ = "0.1.0"

__all__ = ["DistillOptions", "Distillation", "kd_loss", "__version__"]
