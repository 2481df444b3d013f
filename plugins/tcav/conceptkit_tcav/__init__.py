"""TCAV for conceptkit. The method is registered as ``tcav`` through the plugin entry point."""

from conceptkit_tcav.config import TCAVConfig
from conceptkit_tcav.method import TCAV
from conceptkit_tcav.result import TCAVResult, TCAVRow

__all__ = ["TCAV", "TCAVConfig", "TCAVResult", "TCAVRow"]
