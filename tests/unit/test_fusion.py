"""Fusion's rule without a database: the distance, the time, and which alerted report a
new one fuses into."""

from __future__ import annotations

import pytest

from server import Decision, Verdict, decide
from server._fusion import FusionRule, Sighting, distance_m
from server._outcome import Outcome

RULE = FusionRule(within_m=50.0, within_ms=120_000)


def at(name: str, *, north_m: float = 0.0, east_deg: float = 0.0, t: int = 0) -> Sighting:
    return Sighting(name, 52.2 + north_m / 111_195, 21.0 + east_deg, t)


def test_distance_is_great_circle_metres() -> None:
    assert distance_m(52.2, 21.0, 52.2, 21.0) == 0
    assert distance_m(0, 0, 1, 0) == pytest.approx(111_195, rel=1e-4)
    assert distance_m(52.2297, 21.0122, 50.0647, 19.9450) == pytest.approx(252_000, rel=0.01)
    # Symmetric, and a degree of longitude shrinks with the latitude.
    assert distance_m(10, 20, 11, 21) == pytest.approx(distance_m(11, 21, 10, 20))
    assert distance_m(60, 0, 60, 1) == pytest.approx(distance_m(0, 0, 0, 1) / 2, rel=2e-3)


def test_same_scene_needs_both_near_in_space_and_in_time() -> None:
    a = at("a")
    assert RULE.same_scene(a, at("b", north_m=30))
    assert RULE.same_scene(a, at("b", north_m=49.9))
    assert not RULE.same_scene(a, at("b", north_m=60))
    assert RULE.same_scene(a, at("b", north_m=30, t=120_000))
    assert not RULE.same_scene(a, at("b", north_m=30, t=120_001))
    assert not RULE.same_scene(a, at("b", north_m=30, t=-120_001))
    assert not RULE.same_scene(a, a)  # never a report and itself


def test_fusion_off_fuses_nothing() -> None:
    off = FusionRule(within_m=0, within_ms=120_000)
    assert not off.enabled
    assert not off.same_scene(at("a"), at("b"))
    assert off.primary(at("a"), [at("b")]) is None
    with pytest.raises(ValueError):
        FusionRule(within_m=-1, within_ms=0)


def test_primary_is_the_earliest_alerted_report_of_the_scene() -> None:
    report = at("new", t=100_000)
    alerted = [
        at("far", north_m=200, t=10),
        at("late", north_m=20, t=90_000),
        at("early", north_m=40, t=50_000),
        at("old", north_m=10, t=-30_000),
    ]
    assert RULE.primary(report, alerted) == "early"
    # Equal times: the smaller id, whichever order the candidates come in.
    twins = [at("z", north_m=5, t=7), at("m", north_m=5, t=7)]
    assert RULE.primary(report, twins) == RULE.primary(report, twins[::-1]) == "m"
    assert RULE.primary(report, []) is None


def test_outcome_says_what_the_database_and_metrics_say() -> None:
    assert [o.value for o in Outcome] == ["dangerous", "fused", "dismissed"]
    assert Outcome("fused") is Outcome.FUSED
    assert [o for o in Outcome if o.alerts] == [Outcome.DANGEROUS]


def test_the_photos_decision_is_dangerous_or_dismissed_never_fused() -> None:
    high, low = Verdict(0.7, "person_down", True, "1 person"), Verdict(0.2, "no_danger", False)
    assert decide(high, threshold=0.7).outcome is Outcome.DANGEROUS
    assert decide(high, threshold=0.7).dangerous
    assert decide(low, threshold=0.7).outcome is Outcome.DISMISSED
    with pytest.raises(ValueError):
        Decision(Outcome.FUSED, high, "fusion is decided with the other reports")
