from __future__ import annotations

import pytest

from exporter.sweep import escape_point, format_sweep, frr_point, sweep


def _by_target(s: dict) -> dict:
    return {p["target"]: p for p in s["points"]}


def test_sweep_hand_made_scores() -> None:
    good = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # 10 good
    bad = [0.65, 0.95, 1.2, 1.5]  # 4 defective
    s = sweep(good, bad)
    assert s["good"] == 10 and s["defective"] == 4
    pts = _by_target(s)
    # escapes <= 0: largest t with no defect below it is 0.65; midpoint with 0.6 below
    p = pts["escapes<=0"]
    assert p["threshold"] == pytest.approx(0.625)
    assert (p["false_rejects"], p["escapes"]) == (4, 0) and p["frr"] == 0.4
    # escapes <= 0.20 (1/4 = 0.25 > 0.2): still 0.65 -- every escape target maps there
    assert pts["escapes<=0.2"]["threshold"] == pytest.approx(0.625)
    # false rejects <= 0.005, 0.01, 0.02, 0.05: smallest t with none >= t among good: 1.2
    p = pts["false_rejects<=0.005"]
    assert p["threshold"] == pytest.approx(1.1) and (p["false_rejects"], p["escapes"]) == (0, 2)
    # false rejects <= 0.10: one good >= t allowed: t = 0.95 (a defect), below it 0.9
    p = pts["false_rejects<=0.1"]
    assert p["threshold"] == pytest.approx(0.925)
    assert (p["false_rejects"], p["escapes"], p["escape"]) == (1, 1, 0.25)
    # order: escape targets first, then false-reject targets
    assert [q["target"] for q in s["points"]][:2] == ["escapes<=0", "escapes<=0.01"]
    assert s["points"][-1]["target"] == "false_rejects<=0.1"


def test_sweep_ties_and_lowest_candidate() -> None:
    good = [0.5, 0.5, 0.5, 0.5]
    bad = [0.5, 0.5]  # all tied: the only candidate is 0.5, nothing below it
    s = sweep(good, bad)
    pts = _by_target(s)
    p = pts["escapes<=0"]
    assert p["threshold"] == 0.5 and p["false_rejects"] == 4 and p["escapes"] == 0
    assert "false_rejects<=0.1" not in pts  # every good is >= 0.5: no FRR target is met
    assert len(s["points"]) == 6


def test_sweep_empty_defects_and_targets_not_met() -> None:
    s = sweep([0.1, 0.2, 0.3], [])
    assert s["defective"] == 0
    assert all(p["target"].startswith("false_rejects") for p in s["points"])
    # frr(0.1) = 1, frr(0.2) = 2/3, frr(0.3) = 1/3: no target <= 10% is met
    assert s["points"] == []
    s = sweep([0.1] + [0.2] * 9 + [0.3] * 10, [])  # 20 good
    # frr(0.3) = 0.5 only: still nothing
    assert s["points"] == []
    assert escape_point([0.1], [], 0.05) is None
    assert sweep([], []) == {"good": 0, "defective": 0, "points": []}
    # no good scores: only escape targets
    s = sweep([], [0.2, 0.4])
    assert {p["target"] for p in s["points"]} == {
        "escapes<=0", "escapes<=0.01", "escapes<=0.02", "escapes<=0.05", "escapes<=0.1",
        "escapes<=0.2"}
    assert s["points"][0]["threshold"] == 0.2 and s["points"][0]["escapes"] == 0


def test_recompute_at_midpoint_and_exact_targets() -> None:
    good = [float(i) for i in range(100)]  # 0..99
    bad = [98.5, 150.0]
    p = frr_point(good, bad, 0.01)  # smallest t with #{g >= t} <= 1: t = 98.5
    assert p is not None and p.threshold == pytest.approx(98.25)
    assert (p.false_rejects, p.escapes) == (1, 0) and p.frr == 0.01
    p = escape_point(good, bad, 0.5)  # 1 of 2 may escape: t = 150, below it 99
    assert p is not None and p.threshold == pytest.approx(124.5) and p.escapes == 1


def test_format_sweep_rows() -> None:
    s = {"good": 128, "defective": 48, "points": [
        {"target": "escapes<=0.05", "threshold": 0.412345, "frr": 4 / 128, "escape": 2 / 48,
         "false_rejects": 4, "escapes": 2},
        {"target": "false_rejects<=0.005", "threshold": 12.5, "frr": 0.0, "escape": 1.0,
         "false_rejects": 0, "escapes": 48}]}
    lines = format_sweep(s).splitlines()
    # The first column holds the longest label, `false rejects <= 0.5%`, with room to spare.
    assert lines[0] == "target                 threshold   false rejects        escapes"
    assert lines[1] == "escapes <= 5%          0.412345    3.1 % (4/128)        4.2 % (2/48)"
    assert lines[2].startswith("false rejects <= 0.5%  12.500000   0.0 % (0/128)")
    assert lines[2].endswith("100.0 % (48/48)")


def test_pixel_auroc_below_chance_gets_a_hint() -> None:
    from exporter.evaluate import below_chance_hint

    assert below_chance_hint(0.485) is not None and "masks" in below_chance_hint(0.485)
    assert below_chance_hint(0.5) is None and below_chance_hint(None) is None
