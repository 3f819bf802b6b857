"""The NAB scorer (bench/nab/scorer.py): NAB's published rules, and NAB's own scores of two detectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.nab import scorer

NAB_DEV = Path(__file__).resolve().parents[3] / "shared" / "nab-dev"
STANDARD = scorer.Costs(tp=1.0, fp=0.11, fn=1.0)
T0 = np.datetime64("2026-01-01T00:00:00", "s")

# The reference rows of shared/nab-dev/README.md: NAB's own scorer on this split.
REFERENCE = {
    "null": {"standard": 0.0, "reward_low_FP_rate": 0.0, "reward_low_FN_rate": 0.0},
    "windowedGaussian": {"standard": 50.87, "reward_low_FP_rate": 31.13, "reward_low_FN_rate": 59.02},
    "numenta": {"standard": 72.76, "reward_low_FP_rate": 65.97, "reward_low_FN_rate": 76.87},
}
REFERENCE_STANDARD = {"null": (1.1, -67.0), "windowedGaussian": (1.0, 1.168), "numenta": (0.543099, 30.505)}


def times(n: int) -> np.ndarray:
    return T0 + np.arange(n) * np.timedelta64(300, "s")


def one_file(scores: np.ndarray, windows: list[tuple[int, int]]) -> scorer.Labelled:
    """A file of len(scores) rows whose windows are given as row ranges [first, last]."""
    ts = times(len(scores))
    return scorer.label("f.csv", ts, scores, [(ts[a], ts[b]) for a, b in windows], STANDARD)


def raw(scores: np.ndarray, windows: list[tuple[int, int]], threshold: float = 0.5) -> float:
    return scorer.score_at([one_file(scores, windows)], STANDARD, threshold)


@pytest.mark.skipif(not NAB_DEV.is_dir(), reason="shared/nab-dev is not checked out beside the repository")
@pytest.mark.parametrize("detector", ["null", "windowedGaussian", "numenta"])
def test_reproduces_nab_reference_scores_on_the_dev_split(detector):
    windows = scorer.load_windows(NAB_DEV / "labels" / "combined_windows.json")
    profiles = scorer.load_profiles(NAB_DEV / "config" / "profiles.json")
    if detector == "null":  # NAB's null detector: the same score everywhere
        results = {name: (ts, np.full(len(ts), 0.5)) for name, (ts, _) in
                   scorer.read_detector(NAB_DEV / "reference-results" / "numenta", "numenta", windows).items()}
    else:
        results = scorer.read_detector(NAB_DEV / "reference-results" / detector, detector, windows)
    for profile, expected in REFERENCE[detector].items():
        assert scorer.evaluate(results, windows, profiles[profile]).normalised == pytest.approx(expected, abs=0.5)
    standard = scorer.evaluate(results, windows, profiles["standard"])
    threshold, raw_score = REFERENCE_STANDARD[detector]
    assert standard.threshold == pytest.approx(threshold, abs=1e-6)
    assert standard.raw == pytest.approx(raw_score, abs=0.01)


def test_a_detection_at_a_windows_first_row_earns_the_full_true_positive_weight():
    scores = np.zeros(200)
    scores[100] = 1.0
    assert raw(scores, [(100, 119)]) == pytest.approx(1.0)


def test_only_the_first_detection_in_a_window_counts_and_later_is_worth_less():
    early, late, both = np.zeros(200), np.zeros(200), np.zeros(200)
    early[102] = late[115] = both[102] = both[115] = 1.0
    assert 0 < raw(late, [(100, 119)]) < raw(early, [(100, 119)]) < 1.0
    assert raw(both, [(100, 119)]) == pytest.approx(raw(early, [(100, 119)]))


def test_a_missed_window_costs_the_false_negative_weight():
    assert raw(np.zeros(200), [(100, 119)]) == pytest.approx(-1.0)


def test_false_positives_cost_fp_weight_before_any_window_and_less_just_after_one():
    before, after, far = np.zeros(400), np.zeros(400), np.zeros(400)
    before[70] = after[120] = far[300] = 1.0
    miss = -1.0
    assert raw(before, [(100, 119)]) == pytest.approx(miss - 0.11)
    assert miss - 0.02 < raw(after, [(100, 119)]) < miss  # one row past the window: almost free
    assert raw(far, [(100, 119)]) == pytest.approx(miss - 0.11)  # from 3 window widths on: the full weight


def test_probation_rows_are_never_scored():
    scores = np.zeros(1000)
    scores[: scorer.probation(1000)] = 1.0
    assert scorer.probation(1000) == 150 and scorer.probation(10_000) == 750
    assert raw(scores, []) == 0.0


def test_the_sweep_equals_scoring_each_threshold_on_its_own():
    rng = np.random.default_rng(3)
    files = [one_file(np.round(rng.random(500), 2), [(200, 239), (400, 419)]),
             one_file(np.round(rng.random(300), 2), [])]
    thresholds, totals = scorer.sweep(files, STANDARD)
    for threshold, total in zip(thresholds[::7], totals[::7]):
        assert total == pytest.approx(_brute_force(files, threshold))


def _brute_force(files: list[scorer.Labelled], threshold: float) -> float:
    total = 0.0
    for f in files:
        detected = f.scores >= threshold
        total += f.weights[detected & (f.window < 0)].sum()
        for w in np.unique(f.window[f.window >= 0]):
            hits = detected & (f.window == w)
            total += f.weights[hits].max() if hits.any() else -STANDARD.fn
    return total


def test_the_oracle_picks_a_threshold_per_group_and_one_group_is_the_corpus_score():
    ts = times(1000)
    windows = {"a/one.csv": [(ts[500], ts[540])], "b/two.csv": [(ts[500], ts[540])]}
    one, two = np.zeros(1000), np.zeros(1000)
    one[520], one[800] = 0.9, 0.7  # its window found at 0.9; a false positive at 0.7
    two[520] = 0.6  # its window only found from 0.6 on
    results = {"a/one.csv": (ts, one), "b/two.csv": (ts, two)}
    corpus = scorer.evaluate(results, windows, STANDARD)
    assert corpus.threshold == 0.6  # both windows, and the false positive with them
    assert scorer.oracle(results, windows, STANDARD, lambda name: "all") == pytest.approx(corpus.normalised)
    per_file = scorer.oracle(results, windows, STANDARD, lambda name: name)
    false_positive = -scorer.score_at([scorer.label("a/one.csv", ts, np.where(one == 0.7, 1.0, 0.0),
                                                    windows["a/one.csv"], STANDARD)], STANDARD, 0.5) - 1.0
    assert per_file - corpus.normalised == pytest.approx(100 * false_positive / (2 * 2), rel=1e-9)


def _corpus(**detections: list[int]) -> tuple[dict, dict]:
    """Three 1000-row files, categories a and b with a window at rows 500..540 and a quiet category q; the
    keyword arguments give, per file ("a", "b", "q"), the rows where the detector fires."""
    ts = times(1000)
    windows = {"a/one.csv": [(ts[500], ts[540])], "b/two.csv": [(ts[500], ts[540])], "q/quiet.csv": []}
    results = {}
    for name in windows:
        scores = np.zeros(1000)
        scores[detections.get(name[0], [])] = 1.0
        results[name] = (ts, scores)
    return results, windows


def test_each_left_out_category_is_scored_by_the_setting_chosen_on_the_others():
    only_a, _ = _corpus(a=[500])
    only_b, windows = _corpus(b=[500])
    candidates = {"only_a": only_a, "only_b": only_b}
    folds = {fold.category: fold for fold in scorer.leave_one_category_out(candidates, windows, STANDARD, 0.5)}
    assert set(folds) == {"a", "b"}  # the quiet category is never left out: it has nothing to find
    assert folds["a"].chosen == "only_b" and folds["b"].chosen == "only_a"
    assert folds["a"].left_out == pytest.approx(0.0) and folds["b"].left_out == pytest.approx(0.0)
    in_sample = scorer.per_category(only_a, windows, STANDARD, 0.5)
    assert in_sample["a"].normalised == pytest.approx(100.0) and in_sample["b"].normalised == pytest.approx(0.0)


def test_false_positives_on_the_quiet_category_decide_between_otherwise_equal_settings():
    noisy, _ = _corpus(a=[500], b=[500], q=[300, 301, 700])
    clean, windows = _corpus(a=[500], b=[500])
    folds = scorer.leave_one_category_out({"noisy": noisy, "clean": clean}, windows, STANDARD, 0.5)
    assert [fold.chosen for fold in folds] == ["clean", "clean"]
    quiet = scorer.without_anomalies(windows)
    assert list(quiet) == ["q/quiet.csv"]
    assert scorer.false_positive_rows(noisy, quiet, 0.5) == 3 and scorer.false_positive_rows(clean, quiet, 0.5) == 0


def test_with_one_setting_the_folds_are_its_frozen_per_category_scores():
    late, windows = _corpus(a=[520], b=[900])  # a found late in its window; b's detection is a false positive
    folds = scorer.leave_one_category_out({"late": late}, windows, STANDARD, 0.5)
    per_category = scorer.per_category(late, windows, STANDARD, 0.5)
    assert [(f.category, f.left_out) for f in folds] == [(c, r.normalised) for c, r in per_category.items()]
    assert 0 < folds[0].left_out < 100 and folds[1].left_out < 0
