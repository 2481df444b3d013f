"""Scale-out: dataset-scale capture over Ray workers (and, later, other executors).

Only the driver (the process that calls these functions) writes anything: activation folders
and store records. Workers load the model once, compute their shard and return tensors; they
refuse to open the concept store (SQLite is not safe on network filesystems).
Ray is optional: ``pip install conceptkit[ray]``. See docs/scale-out.md.
"""

from conceptkit.scale.moments import Moments
from conceptkit.scale.ray_executor import RayCapture, ShardFailedError, ray_capture, ray_moments
from conceptkit.scale.shards import Shard, merge_shards, shard_ranges

__all__ = [
    "Moments",
    "RayCapture",
    "Shard",
    "ShardFailedError",
    "merge_shards",
    "ray_capture",
    "ray_moments",
    "shard_ranges",
]
