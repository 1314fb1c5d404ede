"""Tests of ranking: peers' mastery, exclusions, ties, fallback and shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recs.clean import encode
from recs.recommend import cluster_categories, popular_list, rank_for_clusters


def _rank(
    courses: list[str],
    rows: list[tuple[str, str, float]],
    labels: list[int],
    top_n: int,
) -> pd.DataFrame:
    catalogue = pd.DataFrame({"course_id": courses, "categories": ["X"] * len(courses)})
    progress = pd.DataFrame(rows, columns=["student_id", "course_id", "progress"])
    data = encode(catalogue, progress)
    ranked = rank_for_clusters(data, np.asarray(labels, np.int32), 0.9, top_n)
    return pd.DataFrame(
        {
            "student": data.students[ranked.student],
            "rank": ranked.rank,
            "course": data.courses[ranked.course],
            "score": ranked.score,
            "cluster": ranked.from_cluster,
        }
    )


def test_rank_orders_by_cluster_share_then_popularity_then_id() -> None:
    rows = [
        ("A", "C3", 1.0),
        ("B", "C3", 1.0),
        ("B", "C2", 1.0),
        ("C", "C1", 0.95),
        ("D", "C2", 0.95),
        ("E", "C1", 0.2),
    ]
    # Cluster 0: A, B, C, E; cluster 1: D.
    out = _rank(["C1", "C2", "C3", "C4"], rows, [0, 0, 0, 1, 0], top_n=4)
    e = out[out.student == "E"]
    # C3 mastered by 2 of 4 peers; C1 and C2 by 1 each: C2 is more popular overall.
    assert e.course.tolist() == ["C3", "C2", "C1", "C4"]
    assert e.cluster.tolist() == [True, True, True, False]
    assert e.score.tolist()[:3] == pytest.approx([0.5, 0.25, 0.25])
    assert e["rank"].tolist() == [1, 2, 3, 4]


def test_rank_never_recommends_a_mastered_course_and_keeps_ranks_dense() -> None:
    rows = [("A", "C1", 1.0), ("A", "C2", 0.95), ("B", "C1", 0.91), ("B", "C3", 0.4)]
    out = _rank(["C1", "C2", "C3", "C4"], rows, [0, 0], top_n=10)
    a = out[out.student == "A"]
    b = out[out.student == "B"]
    assert set(a.course) == {"C3", "C4"}
    assert a["rank"].tolist() == [1, 2]
    assert b.course.tolist()[0] == "C2"
    assert "C1" not in set(b.course)
    assert b["rank"].tolist() == [1, 2, 3]


def test_rank_student_who_mastered_everything_gets_nothing() -> None:
    rows = [("A", "C1", 1.0), ("A", "C2", 1.0), ("B", "C1", 0.5)]
    out = _rank(["C1", "C2"], rows, [0, 0], top_n=10)
    assert "A" not in set(out.student)
    # B is at 50% on C1: not mastered, so still worth recommending; C1 was
    # taken by more students than C2, which breaks the tie.
    assert out[out.student == "B"].course.tolist() == ["C1", "C2"]


def test_rank_alone_in_cluster_falls_back_to_popularity() -> None:
    rows = [("A", "C1", 1.0), ("B", "C1", 1.0), ("C", "C2", 0.3)]
    out = _rank(["C1", "C2", "C3"], rows, [0, 0, 1], top_n=2)
    c = out[out.student == "C"]
    assert c.course.tolist() == ["C1", "C2"]
    assert not c.cluster.any()
    assert c.score.tolist() == pytest.approx([2 / 3, 0.0])


def test_rank_rejects_labels_of_wrong_length() -> None:
    with pytest.raises(ValueError, match="one per student"):
        _rank(["C1"], [("A", "C1", 1.0)], [0, 0], top_n=1)


def test_cluster_categories_share_of_mastered_courses() -> None:
    catalogue = pd.DataFrame(
        {
            "course_id": ["C1", "C2", "C3"],
            "categories": ["AWS|Cloud", "Cloud", "Data"],
        }
    )
    progress = pd.DataFrame(
        {
            "student_id": ["A", "A", "B", "C"],
            "course_id": ["C1", "C2", "C3", "C3"],
            "progress": [1.0, 0.95, 0.99, 0.5],
        }
    )
    data = encode(catalogue, progress)
    frame = cluster_categories(data, np.array([0, 0, 1], np.int32), catalogue, 0.9)
    zero = frame[frame.cluster_id == 0].set_index("category")["share"].to_dict()
    assert zero == pytest.approx({"Cloud": 2 / 3, "AWS": 1 / 3, "Data": 1 / 3})
    assert frame[frame.cluster_id == 1].empty


def test_popular_list_ranks_by_mastery_and_explains_unmastered() -> None:
    catalogue = pd.DataFrame({"course_id": ["C1", "C2", "C3"], "categories": ["X"] * 3})
    progress = pd.DataFrame(
        {
            "student_id": ["A", "B", "B"],
            "course_id": ["C2", "C2", "C1"],
            "progress": [1.0, 1.0, 0.5],
        }
    )
    frame = popular_list(encode(catalogue, progress), 0.9, top_n=3)
    assert frame.course_id.tolist() == ["C2", "C1", "C3"]
    assert frame.score.tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert "no learner has mastered" in frame.reason.iloc[2]
