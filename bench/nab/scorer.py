"""The Numenta Anomaly Benchmark's scorer (NAB v1.x, github.com/numenta/NAB), re-implemented with numpy.

NAB scores a detector by its *detections*: a row is a detection when its anomaly score (in [0, 1]) is at
least a threshold. Each data file has labelled anomaly windows; the rows of the first 15 % of a file (at
most 750 rows) are a probation period and are not scored at all.

Every row gets a weight, by where it lies relative to the windows, through the scaled sigmoid

    σ(x) = 2 / (1 + exp(5x)) - 1      (σ(x) = -1 for x >= 3)

which is ~+0.987 at x = -1, 0 at x = 0 and ~-0.987 at x = 1.

- A row i inside a window [l, r] (width w = r - l + 1 rows) is at position x = -(r - i + 1) / w, so the
  window's first row is at -1 and its last at -1/w; its weight is A_TP · σ(x) / σ(-1): 1 · A_TP at the
  window's start, falling to ~0 at its end. Only the *first* detection in a window counts (the weight is
  decreasing, so it is the largest weight among the window's detections); a window with no detection
  costs -A_FN.
- A row outside every window, after the window that ends at r (width w), is at x = |i - r| / (w - 1) and
  weighs A_FP · σ(x): a detection just after a window is almost free (σ(0+) ≈ 0), one a window's width
  later costs ~A_FP, and from 3 widths on, exactly A_FP. A detection before any window costs A_FP.
  Every such detection counts, not only the first.

So for one threshold θ the raw score of a corpus is

    S(θ) = Σ_windows [ max over detections d in the window of A_TP σ(x_d)/σ(-1), or -A_FN if none ]
         + Σ_detections outside windows A_FP σ(x_d)

summed over every file. The threshold is swept over every distinct anomaly score in the corpus (and 1.1,
which detects nothing), and NAB reports the best S per application profile (the A_* weights of
config/profiles.json). Scores are normalised with the null detector (a constant score: its best is to
detect nothing, S_null = -A_FN · windows) and the perfect one (every window at its start,
S_perfect = A_TP · windows):

    score = 100 · (S - S_null) / (S_perfect - S_null)

The sweep is one sort of the corpus by score: the outside-window weights add up with a cumulative sum,
and each window's contribution is a running maximum within the window (a grouped `maximum.accumulate`).
This reproduces NAB's sweeper.py (calcSweepScore / calcScoreByThreshold), its optimiser (the best
threshold over the whole corpus, ties to the higher threshold) and runner.normalize().
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROBATION_FRACTION = 0.15
PROBATION_CAP = PROBATION_FRACTION * 5000  # NAB caps the probation at 750 rows
NOTHING = 1.1  # the first threshold of NAB's sweep: no row is a detection


@dataclass(frozen=True)
class Costs:
    """One application profile: the weights of a true positive, a false positive and a missed window."""

    tp: float
    fp: float
    fn: float


@dataclass(frozen=True)
class Labelled:
    """One data file as NAB scores it: per scored (post-probation) row, its weight and window (-1: none)."""

    name: str
    scores: np.ndarray  # anomaly score of each scored row
    weights: np.ndarray  # what detecting this row is worth (see module docstring)
    window: np.ndarray  # index of the window holding the row, -1 outside every window
    windows: int  # windows with at least one scored row


@dataclass(frozen=True)
class Result:
    """A detector's raw score at one threshold, and its normalised score (null = 0, perfect = 100)."""

    threshold: float
    raw: float
    normalised: float


def load_profiles(path: str | Path) -> dict[str, Costs]:
    """NAB's config/profiles.json as Costs per profile name."""
    profiles = json.loads(Path(path).read_text())
    return {name: Costs(p["CostMatrix"]["tpWeight"], p["CostMatrix"]["fpWeight"], p["CostMatrix"]["fnWeight"])
            for name, p in profiles.items()}


def load_windows(path: str | Path) -> dict[str, list[tuple[np.datetime64, np.datetime64]]]:
    """labels/combined_windows.json: per "category/file.csv", its anomaly windows as (start, end)."""
    raw = json.loads(Path(path).read_text())
    return {name: [(_time(a), _time(b)) for a, b in limits] for name, limits in raw.items()}


def read_results(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and anomaly scores of a NAB results file (timestamp,value,anomaly_score[,label])."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return (np.array([_time(r["timestamp"]) for r in rows], dtype="datetime64[s]"),
            np.array([float(r["anomaly_score"]) for r in rows]))


def sigma(x: np.ndarray) -> np.ndarray:
    """NAB's scaled sigmoid: 2 / (1 + exp(5x)) - 1, and exactly -1 from x = 3 on."""
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * np.asarray(x, dtype=np.float64))) - 1.0
    return np.where(np.asarray(x) >= 3.0, -1.0, value)


def probation(rows: int) -> int:
    """Rows at the start of a file that NAB does not score."""
    return int(min(math.floor(PROBATION_FRACTION * rows), PROBATION_CAP))


def label(name: str, timestamps: np.ndarray, scores: np.ndarray,
          windows: Sequence[tuple[np.datetime64, np.datetime64]], costs: Costs) -> Labelled:
    """Weigh every row of one file against its windows, as NAB's Sweeper.calcSweepScore does."""
    n = len(timestamps)
    window = np.full(n, -1)
    weight = np.empty(n)
    last_end, last_width = None, None  # the window before the current row, once one has ended
    cursor = 0
    for w, (start, end) in enumerate(windows):
        left = _first(timestamps, start, cursor)
        right = _first(timestamps, end, 0)
        if left is None or right is None:
            raise ValueError(f"{name}: window {start} .. {end} does not match the file's timestamps")
        _outside(weight, cursor, left, last_end, last_width, costs)
        width = right - left + 1
        inside = np.arange(left, right + 1)
        weight[left : right + 1] = costs.tp * sigma(-(right - inside + 1) / width) / sigma(-1.0)
        window[left : right + 1] = w
        last_end, last_width, cursor = right, width, right + 1
    _outside(weight, cursor, n, last_end, last_width, costs)
    scored = slice(probation(n), n)
    kept = window[scored]
    return Labelled(name, np.asarray(scores, dtype=np.float64)[scored], weight[scored], kept,
                    len(np.unique(kept[kept >= 0])))


def sweep(files: Iterable[Labelled], costs: Costs) -> tuple[np.ndarray, np.ndarray]:
    """Raw corpus score at every threshold NAB tries: (thresholds descending from 1.1, scores)."""
    files = list(files)
    offsets = np.cumsum([0] + [int(f.window.max(initial=-1)) + 1 for f in files])[:-1]
    score = np.concatenate([f.scores for f in files])
    weight = np.concatenate([f.weights for f in files])
    window = np.concatenate([np.where(f.window >= 0, f.window + o, -1) for f, o in zip(files, offsets)])
    base = -costs.fn * sum(f.windows for f in files)
    order = np.argsort(-score, kind="stable")
    score, weight, window = score[order], weight[order], window[order]
    change = np.where(window < 0, weight, 0.0)
    change += _window_gains(weight, window, costs)
    total = base + np.cumsum(change)
    last_of_run = np.flatnonzero(np.append(score[1:] != score[:-1], True))
    return np.concatenate([[NOTHING], score[last_of_run]]), np.concatenate([[base], total[last_of_run]])


def score_at(files: Iterable[Labelled], costs: Costs, threshold: float) -> float:
    """Raw corpus score when a row is a detection iff its score >= threshold."""
    thresholds, totals = sweep(files, costs)
    detected = np.flatnonzero(thresholds >= threshold)
    return float(totals[detected[-1]]) if len(detected) else float(totals[0])


def best(files: Iterable[Labelled], costs: Costs) -> tuple[float, float]:
    """NAB's optimised threshold and its raw score (ties go to the higher threshold)."""
    thresholds, totals = sweep(files, costs)
    i = int(np.argmax(totals))  # the first maximum: thresholds are in descending order
    return float(thresholds[i]), float(totals[i])


def normalise(raw: float, null: float, windows: int, costs: Costs) -> float:
    """100 · (raw - null) / (perfect - null), perfect = A_TP per window."""
    perfect = costs.tp * windows
    return 100.0 * (raw - null) / (perfect - null)


def evaluate(results: Mapping[str, tuple[np.ndarray, np.ndarray]],
             windows: Mapping[str, Sequence[tuple[np.datetime64, np.datetime64]]],
             costs: Costs, threshold: float | None = None) -> Result:
    """Score a detector's results (per "category/file.csv": timestamps, scores) for one profile: at NAB's
    optimised threshold, or at a given one. Every file of `windows` must have results."""
    missing = sorted(set(windows) - set(results))
    if missing:
        raise ValueError(f"no results for {len(missing)} labelled files, e.g. {missing[0]}")
    files = [label(name, *results[name], windows[name], costs) for name in sorted(windows)]
    if threshold is None:
        threshold, raw = best(files, costs)
    else:
        raw = score_at(files, costs, threshold)
    return Result(threshold, raw, _normalised(raw, results, windows, costs))


def oracle(results: Mapping[str, tuple[np.ndarray, np.ndarray]],
           windows: Mapping[str, Sequence[tuple[np.datetime64, np.datetime64]]],
           costs: Costs, group: Callable[[str], str]) -> float:
    """The normalised score with NAB's threshold optimised within each group of files (`group` names a file's
    group) instead of over the corpus: with one file per group, a bound no detector can reach with one
    threshold. How much of the gap to it a detector loses to its calibration across files, not its ranking."""
    files: dict[str, list[Labelled]] = {}
    for name in sorted(windows):
        files.setdefault(group(name), []).append(label(name, *results[name], windows[name], costs))
    raw = sum(best(members, costs)[1] for members in files.values())
    return _normalised(raw, results, windows, costs)


def category(name: str) -> str:
    """The NAB category of a "category/file.csv" name."""
    return name.split("/", 1)[0]


def per_category(results: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 windows: Mapping[str, Sequence[tuple[np.datetime64, np.datetime64]]],
                 costs: Costs, threshold: float) -> dict[str, Result]:
    """Each category with anomaly windows scored on its own at a fixed threshold, normalised within it."""
    return {name: evaluate(results, members, costs, threshold)
            for name, members in _categories(windows).items() if any(members.values())}


def false_positive_rows(results: Mapping[str, tuple[np.ndarray, np.ndarray]],
                        windows: Mapping[str, Sequence[tuple[np.datetime64, np.datetime64]]],
                        threshold: float) -> int:
    """Scored (post-probation) rows outside every window whose score is at least `threshold`."""
    count = 0
    for name in windows:
        files = label(name, *results[name], windows[name], Costs(1.0, 1.0, 1.0))
        count += int(np.count_nonzero((files.scores >= threshold) & (files.window < 0)))
    return count


@dataclass(frozen=True)
class Fold:
    """One left-out category: the candidate chosen on the others, its score on the left-out category
    (threshold frozen, normalised within the category) and its score on the categories it was chosen on."""

    category: str
    chosen: str
    left_out: float
    chosen_on: float


def leave_one_category_out(candidates: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                           windows: Mapping[str, Sequence[tuple[np.datetime64, np.datetime64]]],
                           costs: Costs, threshold: float) -> list[Fold]:
    """For each category with anomaly windows: pick the candidate (a detector setting, by name: its results)
    with the best frozen-threshold score on every *other* file, the no-anomaly categories included (their
    false positives cost what NAB charges for them), then score it on the left-out category alone. Ties go
    to the candidate listed first. With one candidate: its frozen score per category."""
    groups = _categories(windows)
    folds = []
    for left_out in (name for name, members in groups.items() if any(members.values())):
        others = {name: limits for name, limits in windows.items() if category(name) != left_out}
        chosen_on = {label_: evaluate(results, others, costs, threshold).normalised
                     for label_, results in candidates.items()}
        chosen = max(chosen_on, key=lambda label_: chosen_on[label_])  # max keeps the first of equals
        score = evaluate(candidates[chosen], groups[left_out], costs, threshold).normalised
        folds.append(Fold(left_out, chosen, score, chosen_on[chosen]))
    return folds


def without_anomalies(windows: Mapping[str, Sequence[tuple[np.datetime64, np.datetime64]]]) -> dict[str, list]:
    """The files of the categories that have no anomaly window at all (NAB's artificialNoAnomaly)."""
    return {name: list(limits) for members in _categories(windows).values() if not any(members.values())
            for name, limits in members.items()}


def _categories(windows: Mapping[str, Sequence[tuple[np.datetime64, np.datetime64]]]) -> dict[str, dict]:
    groups: dict[str, dict] = {}
    for name in sorted(windows):
        groups.setdefault(category(name), {})[name] = windows[name]
    return groups


def _normalised(raw: float, results: Mapping[str, tuple[np.ndarray, np.ndarray]],
                windows: Mapping[str, Sequence[tuple[np.datetime64, np.datetime64]]], costs: Costs) -> float:
    """`raw` normalised against the null detector (0.5 on every row) of the same files."""
    null_files = [label(name, results[name][0], np.full(len(results[name][0]), 0.5), windows[name], costs)
                  for name in sorted(windows)]
    return normalise(raw, best(null_files, costs)[1], sum(len(w) for w in windows.values()), costs)


def read_detector(results_dir: str | Path, detector: str, names: Iterable[str]) -> dict[str, tuple]:
    """Results of `detector` in NAB's layout: <results_dir>/<category>/<detector>_<file>.csv."""
    found = {}
    for name in names:
        category, file = name.split("/", 1)
        found[name] = read_results(Path(results_dir) / category / f"{detector}_{file}")
    return found


def _window_gains(weight: np.ndarray, window: np.ndarray, costs: Costs) -> np.ndarray:
    """Per row (in sweep order), how much its window's contribution max(-A_FN, best detection) rises."""
    gains = np.zeros(len(weight))
    rows = np.flatnonzero(window >= 0)
    if not len(rows):
        return gains
    grouped = rows[np.argsort(window[rows], kind="stable")]  # by window, sweep order kept within each
    groups = window[grouped]
    span = float(np.abs(weight).max()) + costs.fn + 1.0
    lifted = np.maximum(weight[grouped], -costs.fn) + groups * 4 * span  # each window above the previous
    best_so_far = np.maximum.accumulate(lifted) - groups * 4 * span
    first = np.append(True, groups[1:] != groups[:-1])
    before = np.where(first, -costs.fn, np.roll(best_so_far, 1))
    gains[grouped] = best_so_far - before
    return gains


def _outside(weight: np.ndarray, begin: int, end: int, last_end: int | None, last_width: int | None,
             costs: Costs) -> None:
    """Weights of the rows [begin, end) that lie outside every window."""
    if begin >= end:
        return
    if last_end is None or last_width is None:
        weight[begin:end] = -costs.fp
        return
    distance = np.abs(np.arange(begin, end) - last_end) / float(last_width - 1)
    weight[begin:end] = costs.fp * sigma(distance)


def _first(timestamps: np.ndarray, at: np.datetime64, start: int) -> int | None:
    hits = np.flatnonzero(timestamps[start:] == at)
    return int(hits[0]) + start if len(hits) else None


def _time(text: str) -> np.datetime64:
    return np.datetime64(text.strip().replace(" ", "T"), "s")
