"""The run report's feature-importance panel shows the largest importances, whatever the file order."""

from __future__ import annotations

import json

from include.report import top_features


def test_top_features_ranks_by_value_not_by_the_sorted_keys_of_the_metadata_file():
    importance = {f"f{i:02d}": float(i) for i in range(20)}  # largest values are last alphabetically
    reread = json.loads(json.dumps(importance, sort_keys=True))  # as metadata.json stores it
    assert top_features(reread) == [f"f{i:02d}" for i in range(19, 7, -1)]
    assert top_features({"b": 0.1, "a": 0.1, "c": -0.2}, k=2) == ["a", "b"]
