"""torchslim-quantize: the ``int8`` method for torchslim (dynamic int8 Linear, weight-only int8 Conv/LSTM).

Installed, it registers itself through the ``torchslim`` entry-point group; a recipe step
``compress: {method: int8}`` then quantizes, and :func:`torchslim.save` stores the weights as int8.
"""

from .modules import MODULE_KINDS, Int8Conv, Int8Linear, Int8LSTM, dequantize, dynamic_kernel, quantize_per_channel
from .plugin import DEFAULT_TYPES, Int8Options, Int8Quantization, quantize

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TYPES", "Int8Conv", "Int8LSTM", "Int8Linear", "Int8Options", "Int8Quantization", "MODULE_KINDS",
    "dequantize", "dynamic_kernel", "quantize", "quantize_per_channel", "__version__",
]
