"""Scale-out: dataset-scale passes over Ray workers (and the nnsight trace executor).

Methods call :func:`dataset_moments` / :func:`dataset_capture`: local by default, over Ray
inside :func:`use_ray` (``conceptkit run METHOD --ray``) or with ``ray=``. Only the driver (the
process that calls these functions) writes anything: activation folders and store records.
Workers load the model once, by name, compute their shard and return tensors; they refuse to
open the concept store (SQLite is not safe on network filesystems).
Ray is optional: ``pip install conceptkit[ray]``. See docs/scale-out.md.
"""

from conceptkit.scale.dataset import (
    DEFAULT_SHARD_SIZE,
    RayOptions,
    active_ray,
    check_ray_support,
    dataset_capture,
    dataset_moments,
    ray_model_spec,
    ray_requested,
    use_ray,
)
from conceptkit.scale.moments import Moments
from conceptkit.scale.ray_executor import RayCapture, ShardFailedError, ray_capture, ray_moments
from conceptkit.scale.shards import Shard, merge_shards, shard_plan, shard_ranges

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "Moments",
    "RayCapture",
    "RayOptions",
    "Shard",
    "ShardFailedError",
    "active_ray",
    "check_ray_support",
    "dataset_capture",
    "dataset_moments",
    "merge_shards",
    "ray_capture",
    "ray_model_spec",
    "ray_moments",
    "ray_requested",
    "shard_plan",
    "shard_ranges",
    "use_ray",
]
