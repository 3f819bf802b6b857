"""No fit learns an excursion in progress, whatever the engine: the daemon, wired with fakes, is refit a few
minutes into a +30σ jump; the jumped series still pages after that refit, and once the jump has lasted
longer than `new_normal_after` a refit takes it as the new normal. Engines whose library is not installed
are skipped; CI installs them all."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from oa_exporter.core.domain import ModelSpec, RuleScores, SeriesMatrix
from oa_exporter.core.errors import RuleError
from oa_exporter.core.excursions import Excursions, Ongoing, held_back
from oa_exporter.core.jobs import TrainingJob
from oa_exporter.core.rules import SourceDocument, build_rule_set
from tests.unit.fakes import DAY, FakeTsdb, seasonal_series
from tests.unit.harness import END

STEP = 300.0
HOUR = 3600.0
JUMP = 30.0  # the series' noise is 1: a +30σ jump
TINY_NHITS = ('{h: 12, input_size: 36, max_steps: 30, mlp_units: [[16, 16], [16, 16], [16, 16]], '
              'windows_batch_size: 128, learning_rate: 0.005}')
ENGINES = {  # engine, model, params (YAML), the library the engine needs
    "statsforecast-SeasonalProfile": ("statsforecast", "SeasonalProfile", "{}", "statsforecast"),
    "mlforecast-Ridge": ("mlforecast", "Ridge", "{n_windows: 3}", "mlforecast"),
    "neuralforecast-NHITS": ("neuralforecast", "NHITS", TINY_NHITS, "neuralforecast"),
    "darts-LinearRegressionModel": ("darts", "LinearRegressionModel", "{}", "darts"),
    "sklearn-Ridge": ("sklearn", "Ridge", "{}", "sklearn"),
}
EXPR = "sum by (instance, job) (rate(requests_total[5m]))"


def rules(engine: str, model: str, params: str) -> str:
    return f"""
    groups:
      - name: web
        interval: 5m
        rules:
          - anomaly: requests
            expr: {EXPR}
            preset: none
            model: {{engine: {engine}, name: {model}, params: {params}}}
            train: {{every: 2h, window: 3d}}
            new_normal_after: 2h
    """


def jumped_tsdb(days: float = 3) -> FakeTsdb:
    """Days of a daily cycle with unit noise on three hosts; host-00 jumps by 30σ at END - 5m and stays."""
    series = seasonal_series("requests", 3, END - days * DAY, END + 9 * HOUR, step=STEP, seed=5)
    series[0].values[series[0].times >= END - STEP] += JUMP
    return FakeTsdb({EXPR: series})


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_a_refit_minutes_into_a_jump_keeps_paging_until_new_normal_after(start_daemon, engine):
    name, model, params, library = ENGINES[engine]
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed (pip install 'oa-exporter[all]')")
    daemon = await start_daemon(rules(name, model, params), jumped_tsdb(), now=END - 2 * HOUR)
    await daemon.trained()  # fitted two hours before the jump: the next fit is due at END
    jumped: list[float] = []
    after_bound: list[float] = []
    normal: list[float] = []
    for at in np.arange(END - 2 * HOUR + STEP, END + 3 * HOUR, STEP):
        await daemon.cycle(float(at))
        await daemon.fits_done()
        scores = daemon.scores("requests")
        if at <= END + 2 * HOUR:
            jumped.append(scores["host-00"])
        elif at >= END + 2 * HOUR + 40 * 60:  # from the first band refresh after the fit past the bound on
            after_bound.append(scores["host-00"])
        normal.extend((scores["host-01"], scores["host-02"]))
    assert daemon.fits("requests") == 3  # END - 2h, END (two samples into the jump), END + 2h (past the bound)
    in_jump = jumped[len(jumped) - 26 :]  # END - 5m to END + 2h: every cycle scored before the fit past the bound
    if engine.startswith("neuralforecast"):
        # the tiny network's forecast wobbles by a band width from one training run to the next (the same seed
        # gave a minimum of 1.54 alone and of 0.85 in a run of the whole suite); learning the jump would put every
        # cycle near 0 (0.003 without the hold-back), so most cycles paging is the outcome asserted
        assert np.mean(np.asarray(in_jump) > 1.0) >= 0.8 and np.median(in_jump) > 1.5, (
            f"{engine}: the jump stopped paging after a refit: {np.round(in_jump, 2)}")
    else:
        assert min(in_jump) > 1.0, f"{engine}: the jump stopped paging after a refit: {np.round(in_jump, 2)}"
    # (darts' bands made at the adoption of that fit kept the old level for half a horizon in some runs of the
    # whole suite, never alone: the outcome asserted is the change being normal once the bands are refreshed)
    assert max(after_bound) < 1.0, f"{engine}: still paging after new_normal_after: {np.round(after_bound, 2)}"
    assert np.median(normal) < 1.0  # the bands are not simply wide


def scores_of(keys: list[bytes], at: float, y: list[float]) -> RuleScores:
    n = len(keys)
    rule = build_rule_set([SourceDocument("t", {"groups": [{"name": "g", "rules": [{"anomaly": "r", "expr": "x"}]}]})],
                          ModelSpec("statsforecast", "SeasonalProfile")).rules[0]
    return RuleScores(rule, keys, [{}] * n, at, np.array(y), np.zeros(n), np.full(n, -1.0), np.ones(n),
                      np.abs(np.array(y)))


def test_an_excursion_runs_from_the_sample_before_it_until_a_sample_back_inside_the_band():
    excursions = Excursions()
    keys = [b"a", b"b", b"c"]
    excursions.observe(scores_of(keys, 100.0, [0.0, 0.0, 5.0]))  # c: outside at its first sample
    excursions.observe(scores_of(keys, 160.0, [3.0, 0.5, 5.0]))
    excursions.observe(scores_of(keys, 220.0, [4.0, 0.5, 0.0]))
    assert excursions.ongoing() == {b"a": Ongoing(after=100.0, since=160.0)}
    excursions.observe(scores_of([b"a"], 280.0, [np.nan]))  # no sample: still going on
    assert excursions.ongoing() == {b"a": Ongoing(after=100.0, since=160.0)}
    excursions.observe(scores_of([b"c", b"a"], 340.0, [9.0, 0.2]))
    assert excursions.ongoing() == {b"c": Ongoing(after=220.0, since=340.0)}


def test_only_excursions_younger_than_the_bound_are_held_back_and_only_their_samples():
    values = np.arange(20.0).reshape(2, 10)
    history = SeriesMatrix([b"young", b"old"], [{}, {}], 0.0, 60.0, values.copy())
    ongoing = {b"young": Ongoing(after=360.0, since=420.0), b"old": Ongoing(after=60.0, since=120.0)}
    with held_back(history, ongoing, now=540.0, bound=300.0) as held:
        assert held == 1
        assert np.isnan(history.values[0, 7:]).all() and (history.values[0, :7] == values[0, :7]).all()
        assert (history.values[1] == values[1]).all()
    assert (history.values == values).all()  # restored: the matrix may be a view of what the TSDB holds
    with held_back(history, ongoing, now=540.0, bound=0.0) as held:
        assert held == 0


def test_a_training_job_carries_the_excursions_in_progress_to_the_worker():
    rule = build_rule_set([SourceDocument("t", {"groups": [{"name": "g", "rules": [{"anomaly": "r", "expr": "x"}]}]})],
                          ModelSpec("statsforecast", "SeasonalProfile")).rules[0]
    job = TrainingJob(rule, END, {b'{"instance":"a"}': Ongoing(after=END - 120.0, since=END - 60.0)})
    assert TrainingJob.from_payload(json.loads(json.dumps(job.payload()))) == job


@pytest.mark.parametrize("setting, seconds", [(None, 3 * HOUR), ("off", 0.0), ("0", 0.0), ("30m", 1800.0)])
def test_a_rule_on_its_own_model_holds_back_young_excursions_unless_it_says_otherwise(setting, seconds):
    node = {"anomaly": "r", "expr": "x", "model": {"engine": "sklearn", "name": "Ridge"}}
    node |= {} if setting is None else {"new_normal_after": setting}
    [rule] = build_rule_set([SourceDocument("t", {"groups": [{"name": "g", "rules": [node]}]})],
                            ModelSpec("statsforecast", "SeasonalProfile")).rules
    assert rule.new_normal_after == seconds


@pytest.mark.parametrize("extra, seconds", [
    ({}, 0.0), ({"preset": "default"}, 0.0), ({"preset": "none"}, 3 * HOUR),
    ({"model": {"engine": "darts", "name": "LinearRegressionModel"}}, 3 * HOUR)])
def test_the_default_presets_bound_goes_with_its_model(extra, seconds):
    [rule] = build_rule_set([SourceDocument("t", {"groups": [{"name": "g", "rules": [
        {"anomaly": "r", "expr": "x"} | extra]}]})], ModelSpec("statsforecast", "SeasonalProfile")).rules
    assert rule.new_normal_after == seconds


def test_a_bad_new_normal_after_is_reported():
    node = {"anomaly": "r", "expr": "x", "new_normal_after": "soon"}
    with pytest.raises(RuleError, match="new_normal_after"):
        build_rule_set([SourceDocument("t", {"groups": [{"name": "g", "rules": [node]}]})],
                       ModelSpec("statsforecast", "SeasonalProfile"))


async def test_the_default_preset_keeps_paging_through_a_refit_minutes_into_a_jump(start_daemon):
    """`preset: default` holds nothing back (its level, a median of hours, does not follow two samples): the
    outcome is the same, and the jump is the new normal within hours."""
    text = f"""
    groups:
      - name: web
        interval: 5m
        rules:
          - {{anomaly: requests, expr: "{EXPR}", preset: default}}
    """
    tsdb = jumped_tsdb(days=4)
    daemon = await start_daemon(text, tsdb, now=END - HOUR)
    await daemon.trained()  # hourly refits: at END the fit sees two samples of the jump
    jumped = {}
    for at in np.arange(END - HOUR + STEP, END + 8 * HOUR, STEP):
        await daemon.cycle(float(at))
        await daemon.fits_done()
        jumped[float(at)] = daemon.scores("requests")["host-00"]
    assert daemon.app.rules.rules[0].new_normal_after == 0
    onset = END - STEP  # the jump's first sample
    first_hour = [score for at, score in jumped.items() if onset <= at < onset + HOUR]
    assert min(first_hour) > 1.0, np.round(first_hour, 2)  # then the preset's settle_after (1h) settles it
    assert max(score for at, score in jumped.items() if at >= END + 6 * HOUR) < 1.0
