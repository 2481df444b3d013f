"""TCAV for conceptkit. The method is registered as ``tcav`` through the plugin entry point."""

from conceptkit_tcav.config import TCAVConfig
from conceptkit_tcav.method import TCAV

__all__ = ["TCAV", "TCAVConfig"]
