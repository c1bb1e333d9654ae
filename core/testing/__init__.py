"""The plugin author kit: helpers and pytest fixtures that check a plugin honours the torchslim contract.

Installed with torchslim and loaded by pytest automatically (entry point ``pytest11``), so a plugin
package's tests can use the fixtures without any ``conftest.py``::

    from torchslim.testing import check_method_plugin

    def test_int8_honours_the_contract(torchslim_engine, torchslim_tiny_task):
        task = torchslim_tiny_task
        check_method_plugin(torchslim_engine, "int8", task.model, task.example_inputs,
                            good_options={"conv": "weight-only"}, bad_options={"conv": "fp4"})

Fixtures: ``torchslim_engine`` (an :class:`~torchslim.Engine` that discovered every installed plugin),
``torchslim_bare_engine`` (no discovery: register only what a test names) and ``torchslim_tiny_task``
(a small CNN with a learnable synthetic 4-class task, see :func:`tiny_task`).

Helpers: :func:`register_inline_plugin`, :func:`check_method_plugin`, :func:`check_evaluator_plugin`,
:func:`check_strategy`. A failed check raises ``AssertionError`` saying which rule broke and how to fix it.

pytest loads this package (and so torch) in every run in an environment where torchslim is installed,
through the ``pytest11`` entry point: that is the price of fixtures without a ``conftest.py``.
"""

from __future__ import annotations

try:  # the helpers work without pytest; only the fixtures need it
    import pytest
except ImportError:  # pragma: no cover - pytest absent
    pytest = None  # type: ignore[assignment]

from ..engine import Engine
from .checks import check_evaluator_plugin, check_method_plugin, check_strategy
from .engines import engine_of, register_inline_plugin
from .snapshots import model_snapshot
from .tasks import TinyTask, tiny_task

__all__ = [
    "TinyTask", "check_evaluator_plugin", "check_method_plugin", "check_strategy", "engine_of",
    "model_snapshot", "register_inline_plugin", "tiny_task",
]


if pytest is not None:

    @pytest.fixture
    def torchslim_engine() -> "Engine":
        """An :class:`~torchslim.Engine` that discovered every installed plugin (fresh per test)."""

        return Engine()

    @pytest.fixture
    def torchslim_bare_engine() -> "Engine":
        """An :class:`~torchslim.Engine` without discovery: register only what the test needs."""

        return Engine(discover=False)

    @pytest.fixture
    def torchslim_tiny_task() -> TinyTask:
        """A :class:`TinyTask` with a briefly trained model (about 85 % test accuracy, 4 classes; chance is 25 %)."""
        return tiny_task(train_steps=30)
