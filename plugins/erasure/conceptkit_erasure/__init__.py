"""Concept erasure for conceptkit: LEACE, concept scrubbing, UCE."""

from conceptkit_erasure.leace import LeaceEraser, LeaceFitter, OracleEraser, OracleFitter, one_hot_labels
from conceptkit_erasure.uce import apply_stored_edit, uce_draft, uce_edit, uce_solve

__all__ = ["LeaceFitter", "LeaceEraser", "OracleFitter", "OracleEraser", "one_hot_labels", "uce_solve", "uce_edit", "uce_draft", "apply_stored_edit"]
