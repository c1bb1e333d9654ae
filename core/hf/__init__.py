"""Hugging Face transformers in and out (the ``hf`` extra): checkpoints, loading, transformer blocks.

>>> # torchslim.hf.save_pretrained(result, "out/")  then  AutoModel.from_pretrained("out/")
"""

from .blocks import Block, find_blocks, sync_attributes
from .checkpoint import Saved, from_pretrained, mismatches, save_pretrained
from .config import update_config

__all__ = ["Block", "Saved", "find_blocks", "from_pretrained", "mismatches", "save_pretrained", "sync_attributes",
           "update_config"]
