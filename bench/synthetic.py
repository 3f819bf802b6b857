"""False alarms and detection delays on synthetic families of series with known answers.

    python bench/synthetic.py [--preset default | --rules FILE] [--series 5] [--days 21] [--size 10]
                              [--length 6] [--families a b ...] [--jobs N]

Every family of tests/synthetic.py (random-walk drift, slow ramp, noise with no cycle, a daily cycle whose
amplitude grows, a step that stays, sparse and zero-inflated counters, heavy-tailed bursts, a series that
starts today) is generated from fixed seeds on a 5-minute grid and replayed through `oa-exporter
backtest`'s own code (the daemon's Trainer, Inferencer and refit schedule, causal) under a rule that names
the preset. Printed per family:

- on the anomaly-free version: paging excursions (runs of samples scoring above 1) per series per week,
  counted after the warm-up (3 days; from its first sample for the series that starts late), the hours of
  samples scoring above 1 per series per week (how long those excursions page), and the share of the
  samples that were scored at all;
- with anomalies of `--size` × the family's scale added for `--length` samples at fixed times after the
  warm-up: how many were flagged while they lasted, and the delay in samples from their onset to the first
  score above 1 (median and largest over the flagged ones).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import synthetic  # noqa: E402

WEEK_SAMPLES = 7 * synthetic.PER_DAY


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rule = _rule(args.preset, args.rules)
    jobs = args.jobs or os.cpu_count() or 1
    names = args.families or list(synthetic.FAMILIES)
    started = time.perf_counter()
    print(f"{'family':16} {'excursions/series/week':>22} {'paging h/week':>13} {'scored':>7} {'flagged':>8} "
          f"{'delay median':>12} {'delay max':>9}")
    report = {}
    for name in names:
        family = synthetic.FAMILIES[name]
        report[name] = row = measure(family, rule, args.series, args.days, args.size, args.length, jobs)
        print(f"{name:16} {row['excursions_per_series_week']:22.2f} {row['paging_hours_per_series_week']:13.2f} "
              f"{row['scored']:7.1%} "
              f"{row['flagged']:>4}/{row['anomalies']:<3} {_samples(row['delay_median']):>12} "
              f"{_samples(row['delay_max']):>9}")
    seconds = time.perf_counter() - started
    print(f"\n{len(names)} families x {args.series} series x {args.days:g} days, twice (without and with "
          f"+{args.size:g}x scale anomalies of {args.length} samples), in {seconds:.1f} s on {jobs} processes")
    print(json.dumps({"size": args.size, "length": args.length, "series": args.series, "days": args.days,
                      "seconds": round(seconds, 1), "families": report}))
    return 0


def measure(family: synthetic.Family, rule, series: int, days: float, size: float, length: int,  # noqa: ANN001
            jobs: int) -> dict:
    """One family: its false-alarm rate without anomalies and how its injected anomalies are flagged."""
    clean = synthetic.generate(family, series, days)
    score = synthetic.replay(clean, rule, jobs)
    counted = np.isfinite(clean.values[:, clean.first :])
    weeks = np.count_nonzero(counted) / WEEK_SAMPLES
    scored = np.count_nonzero(~np.isnan(score[:, clean.first :]) & counted) / max(np.count_nonzero(counted), 1)
    dirty = synthetic.generate(family, series, days, size=size, length=length)
    assert dirty.injected is not None
    delays = synthetic.delays(synthetic.replay(dirty, rule, jobs), dirty.injected)
    found = delays[delays >= 0]
    paging = np.count_nonzero(score[:, clean.first :] > 1.0)  # NaN: not paging
    return {"excursions_per_series_week": float(synthetic.excursions(score, clean.first).sum() / weeks),
            "paging_hours_per_series_week": float(paging * synthetic.STEP / 3600 / weeks),
            "scored": float(scored), "anomalies": int(delays.size), "flagged": int(found.size),
            "delay_median": float(np.median(found)) if found.size else None,
            "delay_max": int(found.max()) if found.size else None}


def _rule(preset: str, rules_file: Path | None):  # noqa: ANN202 - a Rule
    if rules_file is None:
        return synthetic.default_rule(preset)
    from dataclasses import replace

    from oa_exporter.adapters.config.yaml_rules import parse
    from oa_exporter.bootstrap import engine_registry, model_checker
    from oa_exporter.core.domain import ModelSpec
    from oa_exporter.core.rules import build_rule_set

    rule = build_rule_set([parse(rules_file)], ModelSpec("statsforecast", "SeasonalProfile"),
                          check_model=model_checker(engine_registry())).rules[0]
    return replace(rule, step=synthetic.STEP)


def _samples(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", help="the rules preset to replay with")
    parser.add_argument("--rules", type=Path, default=None, help="a rules file whose first rule replaces the preset")
    parser.add_argument("--series", type=int, default=5, help="series per family (seeds 1, 2, ...)")
    parser.add_argument("--days", type=float, default=21.0, help="days of 5-minute samples per series")
    parser.add_argument("--size", type=float, default=10.0, help="injected anomalies, in units of the family's scale")
    parser.add_argument("--length", type=int, default=6, help="samples each injected anomaly lasts")
    parser.add_argument("--families", nargs="+", choices=sorted(synthetic.FAMILIES), default=None)
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
