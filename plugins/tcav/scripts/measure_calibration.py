"""Calibration and power of the default test on the toy nets of the test-suite (measured figures
for the README): the null false-positive rate over 200 seeded null concepts and the planted
concept's p-value, under both Monte Carlo statistics.

    .venv/bin/python plugins/tcav/scripts/measure_calibration.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PLUGIN / "tests"))


def main() -> None:
    import conceptkit as ck
    from tcav_toys import VectorModel, null_concepts_model, planted_model

    out = {"command": "python plugins/tcav/scripts/measure_calibration.py"}
    for statistic in ("cosine", "score"):
        significant = tested = 0
        for seed in range(10):
            model, config = null_concepts_model(seed)
            result = ck.method("tcav").run(model, dict(config, probe="mean_diff", n_null=99, min_cav_accuracy=0.0, statistic=statistic))
            significant += sum(r.significant for r in result.rows)
            tested += sum(r.tested for r in result.rows)
        model, config = planted_model(VectorModel, seed=0, null=False, n_random=10)
        row = ck.method("tcav").run(model, dict(config, probe="logistic", statistic=statistic)).row("planted")
        out[statistic] = {"null_significant": significant, "null_tested": tested, "fpr": significant / tested,
                          "planted_score": row.mean, "planted_p": row.p_value, "planted_direction": row.direction}
        print(statistic, out[statistic], flush=True)
    dest = PLUGIN / "results" / "calibration.json"
    dest.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
