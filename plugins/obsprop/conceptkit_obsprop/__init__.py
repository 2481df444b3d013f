"""Observable propagation (ObsProp) for conceptkit. The method is registered as ``obsprop``."""

from conceptkit_obsprop.config import Node, Observable, ObsPropConfig, PathSearch
from conceptkit_obsprop.method import ObsProp

__all__ = ["Node", "ObsProp", "ObsPropConfig", "Observable", "PathSearch"]
