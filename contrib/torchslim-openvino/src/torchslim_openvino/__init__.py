"""OpenVINO runtime for torchslim's deploy stage (CPU; fp32, and int8 through NNCF)."""

from __future__ import annotations

from .plugin import OpenVINO, OpenVINOModule, OpenVINOOptions

__all__ = ["OpenVINO", "OpenVINOModule", "OpenVINOOptions"]
