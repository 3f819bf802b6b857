"""bench/nab/compare.py: which windows and false-positive rows two NAB results differ by."""

from __future__ import annotations

from pathlib import Path

from bench.nab import compare


def write(root: Path, category: str, name: str, scores: list[float], labels: list[int]) -> None:
    folder = root / "oaexporter" / category
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"2026-01-01 00:{k:02d}:00,1.0,{s},{label}" for k, (s, label) in enumerate(zip(scores, labels))]
    (folder / f"oaexporter_{name}.csv").write_text("timestamp,value,anomaly_score,label\n" + "\n".join(rows) + "\n")


def test_a_window_found_by_one_side_only_and_the_false_positive_rows_are_reported(tmp_path, capsys):
    labels = [0, 1, 1, 0, 0, 1, 1, 0]
    write(tmp_path / "a", "realTraffic", "speed", [0.6, 0.2, 0.55, 0, 0, 0.1, 0.2, 0.5], labels)
    write(tmp_path / "b", "realTraffic", "speed", [0.6, 0.2, 0.45, 0, 0, 0.1, 0.5, 0.1], labels)
    write(tmp_path / "a", "realTweets", "same", [0.0, 0.7], [0, 1])
    write(tmp_path / "b", "realTweets", "same", [0.0, 0.7], [0, 1])
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out.splitlines()
    traffic = next(line for line in out if line.startswith("realTraffic")).split()
    assert traffic[1:6] == ["2", "1", "1", "1", "1"]  # 2 windows, each found by one side only
    assert " ".join(traffic[6:]) == "1 -> 0"  # row 7 against none: row 0 is NAB's probation (15 % of a file)
    assert "  realTraffic/speed: FP rows 1 -> 0; window peaks (s) 1.22 -> 0.82, 0.25 -> 1.00" in out
    assert not any("realTweets/same" in line for line in out)


def test_a_directory_without_results_is_a_clear_error(tmp_path, capsys):
    assert compare.main([str(tmp_path), str(tmp_path)]) == 2
    assert "no results under" in capsys.readouterr().err


def test_a_file_without_windows_that_differs_in_false_positives_says_so(tmp_path, capsys):
    write(tmp_path / "a", "artificialNoAnomaly", "flat", [0.0, 0.6, 0.0], [0, 0, 0])
    write(tmp_path / "b", "artificialNoAnomaly", "flat", [0.0, 0.4, 0.0], [0, 0, 0])
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "  artificialNoAnomaly/flat: FP rows 1 -> 0; no window" in capsys.readouterr().out.splitlines()
