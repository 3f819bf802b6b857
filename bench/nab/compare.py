"""Where two NAB results differ: the windows one finds and the other misses, and the false-positive rows.

    python bench/nab/compare.py A B [--threshold 0.5]

A and B are results directories written by bench/nab/run.py (`<out>` or, for one of several candidates,
`<out>/<name>`): each holds <dir>/oaexporter/<category>/oaexporter_<file>.csv with the columns
timestamp,value,anomaly_score,label. Per category it prints the windows found (a row at or above the threshold
inside the window, as NAB counts a detection), the false-positive rows (at or above it outside every window,
after the file's probation, which NAB does not score)
and, file by file where the two differ, each window's peak score as our score s (anomaly_score = s / (1 + s),
so 1 is the alert threshold). A score a point or two apart on NAB is often one window or a dozen rows: this
says which.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.nab.scorer import probation  # noqa: E402

DETECTOR = "oaexporter"
FROZEN = 0.5


@dataclass(frozen=True)
class FileResult:
    """One results file: each window's peak anomaly_score, and the rows flagged outside every window."""

    peaks: tuple[float, ...]
    false_positives: int

    def found(self, threshold: float) -> tuple[bool, ...]:
        return tuple(peak >= threshold for peak in self.peaks)


def read_directory(root: Path, threshold: float = FROZEN) -> dict[str, dict[str, FileResult]]:
    """{category: {file: FileResult}} for every results file under root/oaexporter."""
    results: dict[str, dict[str, FileResult]] = {}
    for path in sorted((root / DETECTOR).glob("*/*.csv")):
        name = path.stem.removeprefix(f"{DETECTOR}_")
        results.setdefault(path.parent.name, {})[name] = file_result(path, threshold)
    if not results:
        raise FileNotFoundError(f"no results under {root / DETECTOR}/<category>/ (run bench/nab/run.py --out)")
    return results


def file_result(path: Path, threshold: float) -> FileResult:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    score = np.array([float(row["anomaly_score"]) for row in rows])
    label = np.array([row["label"] not in ("0", "0.0", "") for row in rows])
    edges = np.flatnonzero(np.diff(np.concatenate([[False], label, [False]]).astype(np.int8)))
    peaks = tuple(float(score[start:end].max()) for start, end in zip(edges[::2], edges[1::2]))
    scored = np.arange(len(rows)) >= probation(len(rows))  # NAB scores nothing in a file's probation
    return FileResult(peaks, int(np.count_nonzero((score >= threshold) & ~label & scored)))


def as_ours(anomaly_score: float) -> float:
    """Our score s from NAB's anomaly_score = s / (1 + s)."""
    return anomaly_score / (1 - anomaly_score) if anomaly_score < 1 else float("inf")


def report(first: dict, second: dict, threshold: float, names: tuple[str, str]) -> list[str]:
    """The lines compare prints: a summary per category, then the files whose windows or rows differ."""
    lines = [f"{'category':24s} {'windows':>8s} {names[0][:12]:>12s} {names[1][:12]:>12s} {'only first':>10s} "
             f"{'only second':>11s} {'FP rows':>9s}"]
    details = []
    for category in sorted(set(first) | set(second)):
        a, b = first.get(category, {}), second.get(category, {})
        windows = found_a = found_b = only_a = only_b = fp_a = fp_b = 0
        for name in sorted(set(a) & set(b)):
            hits_a, hits_b = a[name].found(threshold), b[name].found(threshold)
            windows += len(hits_a)
            found_a, found_b = found_a + sum(hits_a), found_b + sum(hits_b)
            only_a += sum(x and not y for x, y in zip(hits_a, hits_b))
            only_b += sum(y and not x for x, y in zip(hits_a, hits_b))
            fp_a, fp_b = fp_a + a[name].false_positives, fp_b + b[name].false_positives
            if hits_a != hits_b or a[name].false_positives != b[name].false_positives:
                peaks = ", ".join(f"{as_ours(x):.2f} -> {as_ours(y):.2f}" for x, y in zip(a[name].peaks, b[name].peaks))
                details.append(f"  {category}/{name}: FP rows {a[name].false_positives} -> "
                               f"{b[name].false_positives}; " + (f"window peaks (s) {peaks}" if peaks else "no window"))
        lines.append(f"{category:24s} {windows:8d} {found_a:12d} {found_b:12d} {only_a:10d} {only_b:11d} "
                     f"{fp_a:4d} -> {fp_b}")
    return lines + (["files that differ:", *details] if details else ["no file differs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a results directory of bench/nab/run.py")
    parser.add_argument("second", type=Path, help="another, compared with the first")
    parser.add_argument("--threshold", type=float, default=FROZEN,
                        help="anomaly_score at which a row is flagged (default 0.5: our score 1)")
    args = parser.parse_args(argv)
    try:
        first, second = read_directory(args.first, args.threshold), read_directory(args.second, args.threshold)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report(first, second, args.threshold, (args.first.name, args.second.name))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
