"""The built-in demo and its data: scikit-learn's digits (:mod:`.digits`) and the demo run (:mod:`.run`)."""

from __future__ import annotations

from .digits import digits_loaders, digits_tensors
from .run import DEMO_STEPS, demo_recipe, run_demo, search_recipe, train_classifier, trained_digits_model

__all__ = ["DEMO_STEPS", "demo_recipe", "digits_loaders", "digits_tensors", "run_demo", "search_recipe",
           "train_classifier", "trained_digits_model"]
