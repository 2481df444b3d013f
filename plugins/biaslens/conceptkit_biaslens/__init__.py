"""BiasLens for conceptkit. The method is registered as ``biaslens`` through the plugin entry point."""

from conceptkit_biaslens.config import BiasLensConfig
from conceptkit_biaslens.method import BiasLens

__all__ = ["BiasLens", "BiasLensConfig"]
