"""What checking the rules' PromQL costs: the parse in this process against the parse in a child process.

Loads rules/anomaly/*.yaml (or the files named) with the in-process parser (the baseline), then with the
PromQL parser process: cold (the child's start included), with the child started but nothing cached, and
cached. Prints the milliseconds and each against the baseline, measured in the same run.

    python bench/promql_check.py [--repeat 20] [rules files...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from oa_exporter.adapters.config.promql import bound_error, parse_error
from oa_exporter.adapters.config.promql_process import PromqlChecker
from oa_exporter.adapters.config.yaml_rules import YamlConfigStore
from oa_exporter.bootstrap import default_model, engine_defaults, engine_registry, model_checker
from oa_exporter.core.rules import ExprChecker
from oa_exporter.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def in_process(expr: str) -> str | None:
    error = bound_error(expr) or parse_error(expr)
    return None if error is None else f"invalid PromQL in 'expr': {error}"


def load_ms(files: list[Path], check: ExprChecker, before: Callable[[], object] = lambda: None) -> float:
    engines = engine_registry()
    store = YamlConfigStore([str(f) for f in files], default_model(Settings(), engines), check,
                            model_checker(engines), engine_defaults(engines))
    before()
    started = time.perf_counter()
    store.load_files(files)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    files = args.files or sorted((ROOT / "rules" / "anomaly").glob("*.yaml"))
    load_ms(files, in_process)  # warm the imports
    baseline = statistics.median(load_ms(files, in_process) for _ in range(args.repeat))
    cold = []
    for _ in range(max(args.repeat // 4, 1)):
        checker = PromqlChecker()
        cold.append(load_ms(files, checker))
        checker.close()
    checker = PromqlChecker()
    checker.start()
    started = statistics.median(load_ms(files, checker, lambda: checker._cache.clear()) for _ in range(args.repeat))
    cached = statistics.median(load_ms(files, checker) for _ in range(args.repeat))
    checker.close()
    print(f"{len(files)} files; load with the in-process parse (baseline): {baseline:.1f} ms")
    for name, ms in [("parser process, cold (child start included)", statistics.median(cold)),
                     ("parser process, child running, nothing cached", started),
                     ("parser process, cached", cached)]:
        print(f"{name}: {ms:.1f} ms ({ms / baseline:.2f}x baseline)")


if __name__ == "__main__":
    main()
