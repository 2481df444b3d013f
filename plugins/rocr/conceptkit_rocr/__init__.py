"""ROCR (rank-one concept redirection) for conceptkit.

Training-free unlearning by weight edit: the MLP down-projections of a few consecutive layers
are changed (rank one per layer, AlphaEdit closed form restricted to the null space of preserved
keys) so that the key of a target concept maps to the hidden state of a harmless one.
Specification: ``methods/rocr.md``; reference code: Acruxos/ORT.
"""

__version__ = "0.1.0"
