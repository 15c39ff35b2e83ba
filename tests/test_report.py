"""The report: JSON round trip, markdown tables and the written folder (report files, plots)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metarec.evaluation.metrics import metric_names
from metarec.evaluation.output import write_report
from metarec.evaluation.report import Report, build_report
from metarec.evaluation.scoring import evaluate_predictions


def test_report_roundtrip_markdown_and_files(tmp_path):
    rng = np.random.default_rng(1)
    true = rng.integers(1, 6, (20, 5)).astype(float)
    mask = np.ones_like(true)
    names = metric_names(("mae", "ndcg"), (3,))
    results = {sc: {m: evaluate_predictions(true + rng.normal(0, s, true.shape), true, mask,
                                            names=names, bootstrap_samples=50, seed=0)
                    for m, s in (("melu", 0.5), ("item_mean", 1.0))}
               for sc in ("warm", "user_cold")}
    curves = {"warm": {"melu": {"0": {"mae": 1.0, "ndcg_at_3": 0.8},
                                "all": {"mae": 0.8, "ndcg_at_3": 0.9}}}}
    report = build_report(results, "melu", curves)
    again = Report.from_dict(json.loads(report.to_json()))
    assert again == report
    md = report.to_markdown()
    assert "| **melu** |" in md and "## user_cold (20 tasks)" in md
    paths = write_report(report, tmp_path / "evaluation", ("mae", "ndcg_at_3"))
    assert sorted(paths) == ["adaptation_mae.png", "adaptation_ndcg_at_3.png", "report.json",
                             "report.md", "scenarios_mae.png", "scenarios_ndcg_at_3.png"]
    for path in paths.values():
        assert path.stat().st_size > 0
    assert paths["scenarios_mae.png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no result for the candidate"):
        build_report(results, "maml")
