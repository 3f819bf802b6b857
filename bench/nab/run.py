"""Detection quality on the Numenta Anomaly Benchmark: our backtest over NAB data, scored as NAB scores.

    python bench/nab/run.py [--data DIR --labels FILE --profiles FILE --out DIR] [--preset default | --rules FILE]
                            [--jobs N] [--loco]

Defaults read the NAB development split beside the repository (../shared/nab-dev). Every data file is
replayed with `oa-exporter backtest`'s own code (the daemon's Trainer, Inferencer and refit schedule,
causal: a row's score only uses the rows before it) under a rule that names the preset, with its `step`
set to the file's sampling interval (the median gap between rows, as a user sets step to their scrape
interval). Nothing else depends on the file.

Results are written in NAB's layout, <out>/oaexporter/<category>/oaexporter_<file>.csv with columns
timestamp,value,anomaly_score,label, so NAB itself can score them too. NAB wants scores in [0, 1]; ours
are in [0, ∞) with the alert threshold at 1, so the file holds the monotone map

    anomaly_score = s / (1 + s)        (s = our score; rows not scored yet: 0)

which sends our threshold 1 to 0.5. Scores are reported per profile twice: with the threshold NAB
optimises over the corpus, and frozen at 0.5 (our own alert threshold: what a user gets). The reference
detectors' results, when present beside the data, are scored in the same run as the baseline.

`--loco` adds leave-one-category-out with the threshold frozen at 0.5: each category with anomaly windows is
scored on its own, normalised within it (null detector 0, perfect 100), by the setting chosen on all the
other files (the no-anomaly category's false positives included); it prints the left-out scores, their mean
and the false-positive rows on the no-anomaly category. Several settings (`--preset A B ...` or
`--rules A.yml B.yml ...`) are the candidates to choose among, each replayed once into <out>/<name>/; with
one, the folds are its frozen per-category scores and the layout above is unchanged.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.nab import scorer  # noqa: E402
from oa_exporter.bootstrap import engine_registry, model_checker  # noqa: E402
from oa_exporter.core.domain import ModelSpec, RuleGroup, RuleSet  # noqa: E402
from oa_exporter.core.rules import SourceDocument, build_rule_set  # noqa: E402
from oa_exporter.entrypoints.backtest import Progress, csv_jobs, replay_all  # noqa: E402

DETECTOR = "oaexporter"  # NAB splits detector names on "_"
NAB_DEV = Path(__file__).resolve().parents[3] / "shared" / "nab-dev"
FROZEN = 0.5  # our alert threshold, score 1, through s / (1 + s)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    windows = scorer.load_windows(args.labels or args.data.parent / "labels" / "combined_windows.json")
    profiles = scorer.load_profiles(args.profiles or args.data.parent / "config" / "profiles.json")
    files = {name: args.data / name for name in sorted(windows)}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        print(f"missing data files: {missing[:3]}...", file=sys.stderr)
        return 1
    candidates = candidate_settings(args.preset, args.rules)
    jobs = args.jobs or os.cpu_count() or 1
    detectors = {}
    for name, (preset, rules_file) in candidates.items():
        out = args.out if len(candidates) == 1 else args.out / name
        if len(candidates) > 1:
            print(f"\n== {name}")
        detectors[name] = report_one(files, windows, profiles, args.data.parent, preset, rules_file, jobs, out)
    if args.loco:
        print_loco(detectors, windows, profiles["standard"], args.data.parent, args.out)
    return 0


def candidate_settings(presets: list[str], rules_files: list[Path] | None) -> dict[str, tuple]:
    """The settings to replay, by name: each rules file (by its stem), else each preset."""
    if not rules_files:
        return {preset: (preset, None) for preset in presets}
    names = [path.stem for path in rules_files]
    if len(set(names)) < len(names):
        names = [str(path).replace("/", "_") for path in rules_files]
    return {name: (presets[0], path) for name, path in zip(names, rules_files)}


def report_one(files: dict[str, Path], windows: dict[str, list], profiles: dict, nab: Path, preset: str,
               rules_file: Path | None, jobs: int, out: Path) -> dict:
    """Replay every file under one setting, print and write its NAB report; return its results by file."""
    started = time.perf_counter()
    scores = replay(files, windows, preset, rules_file, jobs, out)
    replayed = time.perf_counter() - started
    results = {name: scorer.read_results(path) for name, path in scores.items()}
    report = {"runtime_seconds": round(replayed, 1), "files": len(files), "windows": sum(map(len, windows.values())),
              "rows": sum(len(r[0]) for r in results.values()), "profiles": {}}
    print(f"\nreplayed {report['files']} files, {report['rows']:,} rows in {replayed:.1f} s on {jobs} processes")
    print(f"{'detector':18} {'profile':20} {'optimised':>9} {'threshold':>9} {'frozen 0.5':>10}")
    for name, costs in profiles.items():
        best = scorer.evaluate(results, windows, costs)
        frozen = scorer.evaluate(results, windows, costs, FROZEN)
        report["profiles"][name] = {"optimised": round(best.normalised, 2), "threshold": best.threshold,
                                    "frozen": round(frozen.normalised, 2), "raw_optimised": round(best.raw, 3),
                                    "raw_frozen": round(frozen.raw, 3)}
        print(f"{DETECTOR:18} {name:20} {best.normalised:9.2f} {best.threshold:9.4f} {frozen.normalised:10.2f}")
    detectors = {DETECTOR: results}
    for detector, reference in references(windows, nab).items():
        detectors[detector] = reference
        for name, costs in profiles.items():
            best = scorer.evaluate(reference, windows, costs)
            print(f"{detector:18} {name:20} {best.normalised:9.2f} {best.threshold:9.4f} {'':>10}")
            report.setdefault("baselines", {}).setdefault(detector, {})[name] = round(best.normalised, 2)
    print_ceilings(detectors, windows, profiles, report)
    (out / f"{DETECTOR}_scores.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return results


def references(windows: dict[str, list], nab: Path) -> dict[str, dict]:
    """The reference detectors' published results, where they lie beside the data (in `nab`)."""
    found = {}
    for detector in ("numenta", "windowedGaussian"):
        folder = nab / "reference-results" / detector
        if folder.is_dir():
            found[detector] = scorer.read_detector(folder, detector, windows)
    return found


def print_loco(detectors: dict[str, dict], windows: dict[str, list], costs: scorer.Costs, nab: Path,
               out: Path) -> None:
    """Leave-one-category-out, threshold frozen at 0.5: per category with anomalies, the setting chosen on
    every other file (the no-anomaly category's false positives included) scored on the left-out category,
    normalised within it; the mean of those is the number that says how the setting generalises."""
    folds = scorer.leave_one_category_out(detectors, windows, costs, FROZEN)
    quiet = scorer.without_anomalies(windows)
    false_positives = {name: scorer.false_positive_rows(results, quiet, FROZEN) for name, results in detectors.items()}
    mean = float(np.mean([fold.left_out for fold in folds]))
    print(f"\nleave-one-category-out, standard profile, threshold frozen at {FROZEN}")
    print(f"{'left-out category':24} {'chosen on the others':24} {'others':>7} {'left-out':>8} {'best in-sample':>14}")
    in_sample = {name: scorer.per_category(results, windows, costs, FROZEN) for name, results in detectors.items()}
    for fold in folds:  # best in-sample: the candidate chosen on the category itself, what the fold guards against
        best = max(scores[fold.category].normalised for scores in in_sample.values())
        print(f"{fold.category:24} {fold.chosen:24} {fold.chosen_on:7.2f} {fold.left_out:8.2f} {best:14.2f}")
    print(f"{'mean of left-out':24} {'':24} {'':>7} {mean:8.2f}")
    for name, count in false_positives.items():
        print(f"false-positive rows on the no-anomaly category ({len(quiet)} files), {name}: {count}")
    report = {"threshold": FROZEN, "mean": round(mean, 2),
              "folds": [{"category": f.category, "chosen": f.chosen, "left_out": round(f.left_out, 2),
                         "chosen_on": round(f.chosen_on, 2)} for f in folds],
              "no_anomaly_false_positive_rows": false_positives,
              "in_sample": {name: {c: round(r.normalised, 2) for c, r in scores.items()}
                            for name, scores in in_sample.items()}}
    reference = references(windows, nab).get("numenta")
    if reference is not None:  # at its own corpus-optimised threshold: one threshold for every file, as ours
        threshold = scorer.evaluate(reference, windows, costs).threshold
        htm = scorer.per_category(reference, windows, costs, threshold)
        print(f"numenta HTM in-sample, frozen at its optimised {threshold:.4f}: "
              + ", ".join(f"{c} {r.normalised:.2f}" for c, r in htm.items())
              + f"; mean {np.mean([r.normalised for r in htm.values()]):.2f}")
        report["numenta_in_sample"] = {c: round(r.normalised, 2) for c, r in htm.items()} | {"threshold": threshold}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{DETECTOR}_loco.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


def print_ceilings(detectors: dict[str, dict], windows: dict[str, list], profiles: dict, report: dict) -> None:
    """Standard profile with NAB's threshold optimised per category and per file instead of over the corpus:
    how much of each detector's score its calibration across files costs (see scorer.oracle)."""
    costs = profiles["standard"]
    print(f"{'detector':18} {'standard, threshold':20} {'per file':>9} {'per category':>13}")
    for detector, results in detectors.items():
        per_file = scorer.oracle(results, windows, costs, lambda name: name)
        per_category = scorer.oracle(results, windows, costs, lambda name: name.split("/", 1)[0])
        print(f"{detector:18} {'chosen after the fact':20} {per_file:9.2f} {per_category:13.2f}")
        report.setdefault("ceilings", {})[detector] = {"per_file": round(per_file, 2),
                                                       "per_category": round(per_category, 2)}


def replay(files: dict[str, Path], windows: dict[str, list], preset: str, rules_file: Path | None, jobs: int,
           out: Path) -> dict[str, Path]:
    """Backtest every file under its rule; write NAB results files; return them by 'category/file.csv'."""
    rules = {name: rule_for(path, preset, rules_file) for name, path in files.items()}
    work = []
    for name, path in files.items():
        job = next(csv_jobs(RuleSet((RuleGroup("nab", rules[name].step, (rules[name],)),)), [str(path)], None,
                            math.inf))
        work.append((name, job))
    by_job = {id(job): name for name, job in work}
    written = {}
    with Progress(sum(job.points for _, job in work), sys.stderr if sys.stderr.isatty() else None) as progress:
        for job, result in replay_all([job for _, job in work], jobs):
            name = by_job[id(job)]
            written[name] = write_results(out, name, job.stamps or [], result.y[0], result.score[0],
                                          in_windows(job.stamps or [], windows[name]))
            progress.advance(job.points)
    return written


def rule_for(path: Path, preset: str, rules_file: Path | None):  # noqa: ANN201 - a Rule
    """The rule replaying one file: the preset (or the rules file's first rule), stepped at the file's rate."""
    step = sampling_interval(path)
    checker = model_checker(engine_registry())
    if rules_file is not None:
        from oa_exporter.adapters.config.yaml_rules import parse

        rule = build_rule_set([parse(rules_file)], ModelSpec("statsforecast", "SeasonalProfile"),
                              check_model=checker).rules[0]
        return replace(rule, step=step)
    document = {"groups": [{"name": "nab", "interval": f"{step:g}s", "rules": [
        {"anomaly": "nab", "expr": "nab", "preset": preset, "step": f"{step:g}s"}]}]}
    return build_rule_set([SourceDocument("bench/nab", document)], ModelSpec("statsforecast", "SeasonalProfile"),
                          check_model=checker).rules[0]


def sampling_interval(path: Path) -> float:
    """The median gap between consecutive rows, in whole seconds."""
    from oa_exporter.adapters.tsdb.csv_files import read_csv

    gaps = np.diff(read_csv(path).times)
    return float(max(round(float(np.median(gaps[gaps > 0]))), 1))


def in_windows(stamps: list[str], limits: list) -> np.ndarray:
    """NAB's label column: 1 for the rows inside an anomaly window."""
    times = np.array([np.datetime64(s.replace(" ", "T"), "s") for s in stamps])
    label = np.zeros(len(times), dtype=np.int64)
    for start, end in limits:
        label[(times >= start) & (times <= end)] = 1
    return label


def write_results(out: Path, name: str, stamps: list[str], y: np.ndarray, score: np.ndarray,
                  label: np.ndarray) -> Path:
    category, file = name.split("/", 1)
    path = out / DETECTOR / category / f"{DETECTOR}_{file}"
    path.parent.mkdir(parents=True, exist_ok=True)
    mapped = np.where(np.isnan(score), 0.0, score / (1.0 + score))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("timestamp", "value", "anomaly_score", "label"))
        for row in zip(stamps, y.tolist(), mapped.tolist(), label.tolist()):
            writer.writerow((row[0], repr(row[1]), repr(row[2]), row[3]))
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=NAB_DEV / "data", help="NAB data directory")
    parser.add_argument("--labels", type=Path, default=None,
                        help="NAB labels/combined_windows.json (default: beside --data)")
    parser.add_argument("--profiles", type=Path, default=None, help="NAB config/profiles.json (default: beside --data)")
    parser.add_argument("--out", type=Path, default=Path("nab-results"), help="results directory")
    parser.add_argument("--preset", nargs="+", default=["default"],
                        help="the rules preset to replay with (several: candidates for --loco)")
    parser.add_argument("--rules", type=Path, nargs="+", default=None,
                        help="a rules file whose first rule replaces the preset (several: candidates for --loco)")
    parser.add_argument("--loco", action="store_true",
                        help="also score leave-one-category-out with the threshold frozen at 0.5")
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
