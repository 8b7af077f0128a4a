"""The app-store demo end to end on its default data: the issue's acceptance criteria."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_train import skip_plots
from widedeep.demo import appstore_demo


@pytest.mark.slow
def test_appstore_demo_meets_the_acceptance_criteria(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_plots(monkeypatch)
    demo = appstore_demo(tmp_path, users_to_show=2, k=5)

    auc = {parts: run.test_metrics["auc"] for parts, run in demo.runs.items() if run.test_metrics}
    assert set(auc) == {"wide", "deep", "wide_deep"}
    assert auc["wide_deep"] >= auc["wide"], auc
    assert auc["wide_deep"] >= auc["deep"], auc

    ranking = demo.ranking
    assert ranking.protocol == "full" and ranking.k == 10
    model, baseline = ranking.model["ndcg@10"], ranking.popularity["ndcg@10"]
    assert baseline > 0
    assert model >= 1.2 * baseline, (model, baseline)

    recs = demo.recommendations
    assert recs.columns == ["user_id", "rank", "app_id", "score"]
    counts = recs.group_by("user_id", maintain_order=True).len()
    assert counts.height == 2
    assert counts["len"].to_list() == [5, 5]
    assert recs["rank"].to_list() == [1, 2, 3, 4, 5] * 2
    shown = set(counts["user_id"])
    seen = pl.read_parquet(demo.runs["wide_deep"].run_dir / "interactions" / "train.parquet")
    seen_pairs = set(
        seen.filter(pl.col("user_id").is_in(list(shown))).select("user_id", "app_id").rows()
    )
    assert not seen_pairs & set(recs.select("user_id", "app_id").rows())
