"""Synthetic families with known answers (tests/synthetic.py): how they are made and counted, and the
false-alarm budgets and detection delays `preset: default` meets on them, replayed through the backtest."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests import synthetic


def test_a_family_is_the_same_for_the_same_seed_and_differs_across_seeds():
    one = synthetic.generate(synthetic.FAMILIES["heavy_tailed"], series=2, days=4)
    again = synthetic.generate(synthetic.FAMILIES["heavy_tailed"], series=2, days=4)
    assert np.array_equal(one.values, again.values)
    assert not np.array_equal(one.values[0], one.values[1])


def test_anomalies_are_injected_after_the_warm_up_at_their_stated_size():
    family = synthetic.FAMILIES["white_noise"]
    clean = synthetic.generate(family, series=2, days=10)
    dirty = synthetic.generate(family, series=2, days=10, size=8.0, length=6)
    assert dirty.injected is not None and len(dirty.injected.onsets) == 5
    assert min(dirty.injected.onsets) >= clean.first == 3 * synthetic.PER_DAY
    added = dirty.values - clean.values
    changed = np.flatnonzero(added[0])
    assert added[0, changed] == pytest.approx(8.0 * family.scale)
    assert changed.tolist() == [o + k for o in dirty.injected.onsets for k in range(6)]


def test_a_series_that_starts_today_has_no_samples_before_and_counts_from_its_first():
    young = synthetic.generate(synthetic.FAMILIES["starts_today"], series=1, days=21)
    present = np.flatnonzero(~np.isnan(young.values[0]))
    assert present[0] == young.first == 19 * synthetic.PER_DAY and present[-1] == young.values.shape[1] - 1


def test_excursions_are_runs_above_one_that_begin_after_the_warm_up():
    score = np.array([[2.0, 2.0, 0.0, 1.5, np.nan, 3.0, 3.0, 0.5, 1.0, 1.01]])
    assert synthetic.excursions(score, first=0).tolist() == [4]
    assert synthetic.excursions(score, first=1).tolist() == [3]  # the run at 0 began before the warm-up ended


def test_a_delay_is_samples_from_onset_to_the_first_score_above_one_while_the_anomaly_lasts():
    injected = synthetic.Injected(size=10.0, length=3, onsets=(2, 6))
    score = np.array([[0.0, 0.0, 0.5, 1.2, 0.0, 0.0, 0.2, 0.3, 0.4, 5.0],
                      [0.0, 0.0, 4.0, 0.0, 0.0, 0.0, np.nan, 2.0, 0.0, 0.0]])
    assert synthetic.delays(score, injected).tolist() == [[1, -1], [0, 1]]


# Budgets `preset: default` meets today (bench/synthetic.py measures every family; the others are not met yet):
# paging excursions per series per week on the anomaly-free version, and samples to flag a +10-scale anomaly.
EXCURSIONS_PER_WEEK = 1.0
DELAY_SAMPLES = 1


def weekly_excursions(generated: synthetic.Generated, score: np.ndarray) -> float:
    weeks = np.count_nonzero(np.isfinite(generated.values[:, generated.first :])) / (7 * synthetic.PER_DAY)
    return float(synthetic.excursions(score, generated.first).sum() / weeks)


def test_a_sparse_counter_pages_at_most_once_a_week():
    clean = synthetic.generate(synthetic.FAMILIES["sparse_counter"], series=3, days=14)
    assert weekly_excursions(clean, synthetic.replay(clean, synthetic.default_rule())) <= EXCURSIONS_PER_WEEK


def test_anomalies_of_ten_times_the_noise_are_flagged_at_once_on_noise_without_a_cycle():
    dirty = synthetic.generate(synthetic.FAMILIES["white_noise"], series=2, days=21, size=10.0, length=6)
    assert dirty.injected is not None
    delays = synthetic.delays(synthetic.replay(dirty, synthetic.default_rule()), dirty.injected)
    assert ((delays >= 0) & (delays <= DELAY_SAMPLES)).all(), delays


def test_a_growing_daily_cycle_pages_within_a_few_a_week_once_the_profile_follows_its_amplitude():
    clean = synthetic.generate(synthetic.FAMILIES["growing_cycle"], series=3, days=21)
    rule = synthetic.default_rule()
    following = replace(rule, model=replace(rule.model, params={**rule.model.params, "amplitude_window": "3d"}))
    # measured on 5 series: 30.1 a series-week as the preset is (every peak outgrows a median of 8 weeks), 2.2
    assert weekly_excursions(clean, synthetic.replay(clean, rule)) >= 20
    assert weekly_excursions(clean, synthetic.replay(clean, following)) <= 3


def test_noise_without_a_cycle_pages_at_most_once_a_week():
    clean = synthetic.generate(synthetic.FAMILIES["white_noise"], series=3, days=21)
    # measured 0.65 a series-week (0.91 without the preset's cross_fit: bands of its first two weeks learned
    # from a profile's fit to its own noise)
    assert weekly_excursions(clean, synthetic.replay(clean, synthetic.default_rule())) <= EXCURSIONS_PER_WEEK


def test_a_slow_ramp_pages_at_most_once_a_week_once_its_young_weekly_profile_is_cross_fitted():
    clean = synthetic.generate(synthetic.FAMILIES["slow_ramp"], series=3, days=21)
    rule = synthetic.default_rule()
    longer = replace(rule, model=replace(rule.model, params={**rule.model.params, "cross_fit": "28d"}))
    # measured on these 3 series: 3.9 a series-week as the preset is (from its third week the weekly profile is
    # a median of two cycles of the ramp, and the range cap its own residuals set is too narrow), 0.8
    assert weekly_excursions(clean, synthetic.replay(clean, rule)) >= 3
    assert weekly_excursions(clean, synthetic.replay(clean, longer)) <= EXCURSIONS_PER_WEEK
