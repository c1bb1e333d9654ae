"""torchslim-quantize: the ``int8`` method for torchslim (dynamic int8 Linear and GRU; weight-only int8 Conv,
LSTM and RNN).

Installed, it registers itself through the ``torchslim`` entry-point group; a recipe step
``compress: {method: int8}`` then quantizes, and :func:`torchslim.save` stores the weights as int8
(and, where pruning left zeros, as int8 values plus a bitmask).
"""

from .modules import (
                      MODULE_KINDS,
                      Int8Conv,
                      Int8GRU,
                      Int8Linear,
                      Int8LSTM,
                      Int8RNN,
                      dequantize,
                      dynamic_kernel,
                      quantize_per_channel,
)
from .plugin import DEFAULT_TYPES, Int8Options, Int8Quantization, quantize
from .recurrent import Int8Recurrent, recurrent_kernel

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_TYPES", "Int8Conv", "Int8GRU", "Int8LSTM", "Int8Linear", "Int8Options", "Int8Quantization", "Int8RNN",
    "Int8Recurrent", "MODULE_KINDS", "dequantize", "dynamic_kernel", "quantize", "quantize_per_channel",
    "recurrent_kernel", "__version__",
]
