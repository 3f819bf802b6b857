"""The /metrics page as Prometheus will parse it."""

from __future__ import annotations

import gzip
import math

import numpy as np

from oa_exporter.adapters.sinks.exposition import ExpositionPage
from oa_exporter.core.domain import ModelSpec, Rule, RuleScores
from tests.unit.fakes import RESULT_FAMILIES, samples, series_key, values

MODEL = ModelSpec("statsforecast", "SeasonalProfile")


def rule(name: str = "requests", **labels: str) -> Rule:
    return Rule(name=name, group="g", expr="up", step=60.0, model=MODEL, labels=labels)


def scores(the_rule: Rule, series: list[dict[str, str]], y, yhat=None, lower=None, upper=None,
           score=None) -> RuleScores:
    n = len(series)

    def column(v):
        return np.full(n, np.nan) if v is None else np.asarray(v, dtype=np.float64)

    return RuleScores(the_rule, [series_key(s) for s in series], series, 1000.0, column(y), column(yhat),
                      column(lower), column(upper), column(score))


def rendered(*published: RuleScores) -> bytes:
    page = ExpositionPage()
    for result in published:
        page.publish(result)
    page.flush()
    return page.page()


def test_every_family_is_rendered_with_its_labels():
    series = [{"__name__": "up", "instance": "a"}, {"__name__": "up", "instance": "b"}]
    page = rendered(scores(rule(team="web"), series, [1, 2], [1.5, 2], [1, 1], [2, 3], [1.0, 0.0]))
    found = samples(page)
    assert {s.name for s in found} == set(RESULT_FAMILIES)
    assert {s.labels["instance"] for s in found} == {"a", "b"}
    assert all(s.labels == {"rule": "requests", "instance": s.labels["instance"], "team": "web"}
               for s in found)
    assert values(page, "oa_yhat_upper") == {"a": 2.0, "b": 3.0}
    assert values(page, "oa_anomaly_score") == {"a": 1.0, "b": 0.0}


def test_label_values_are_escaped():
    tricky = 'say "hi"\\ then\nnewline'
    page = rendered(scores(rule(), [{"path": tricky}], [1.0]))
    [sample] = samples(page)
    assert sample.labels["path"] == tricky
    assert b'path="say \\"hi\\"\\\\ then\\nnewline"' in page


def test_an_input_rule_label_is_kept_as_exported_rule():
    page = rendered(scores(rule("mine"), [{"rule": "theirs", "job": "j"}], [1.0]))
    [sample] = samples(page)
    assert sample.labels == {"rule": "mine", "exported_rule": "theirs", "job": "j"}


def test_rule_labels_win_over_input_labels():
    page = rendered(scores(rule(team="web"), [{"team": "db"}], [1.0]))
    [sample] = samples(page)
    assert sample.labels["team"] == "web"


def test_missing_values_are_left_out_and_infinities_spelled_out():
    series = [{"i": "ready"}, {"i": "not-ready"}, {"i": "infinite"}]
    page = rendered(
        scores(rule(), series, [1.0, 2.0, math.inf], [1.0, np.nan, 0.0], score=[0.0, np.nan, math.inf])
    )
    assert values(page, "oa_y", by="i") == {"ready": 1.0, "not-ready": 2.0, "infinite": math.inf}
    assert values(page, "oa_yhat", by="i") == {"ready": 1.0, "infinite": 0.0}
    assert values(page, "oa_anomaly_score", by="i") == {"ready": 0.0, "infinite": math.inf}
    assert values(page, "oa_yhat_lower", by="i") == {}
    assert b'oa_y{rule="requests",i="infinite"} +Inf\n' in page
    assert b"nan" not in page.lower()


def test_help_and_type_appear_once_per_family_with_several_rules():
    page = rendered(
        scores(rule("one"), [{"i": "a"}], [1.0], [1.0], [0.0], [2.0], [0.0]),
        scores(rule("two"), [{"i": "a"}, {"i": "b"}], [1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [2.0, 3.0],
               [0.0, 0.0]),
    )
    text = page.decode()
    for name in RESULT_FAMILIES:
        assert text.count(f"# HELP {name} ") == 1
        assert text.count(f"# TYPE {name} gauge") == 1
    assert values(page, "oa_y", by="rule", i="a") == {"one": 1.0, "two": 1.0}


def test_publishing_again_replaces_the_rule_results():
    page = ExpositionPage()
    page.publish(scores(rule(), [{"i": "a"}, {"i": "b"}], [1.0, 2.0]))
    page.publish(scores(rule(), [{"i": "b"}], [3.0]))
    page.flush()
    assert values(page.page(), "oa_y", by="i") == {"b": 3.0}


def test_a_changed_rule_relabels_its_series():
    page = ExpositionPage()
    page.publish(scores(rule(team="a"), [{"i": "x"}], [1.0]))
    page.publish(scores(rule(team="b"), [{"i": "x"}], [1.0]))
    page.flush()
    [sample] = samples(page.page())
    assert sample.labels["team"] == "b"


def test_forget_removes_a_rule():
    page = ExpositionPage()
    page.publish(scores(rule("one"), [{"i": "a"}], [1.0]))
    page.publish(scores(rule("two"), [{"i": "a"}], [2.0]))
    page.forget("one")
    page.forget("never-published")
    page.flush()
    assert values(page.page(), "oa_y", by="rule") == {"two": 2.0}


def test_results_are_visible_only_after_flush():
    page = ExpositionPage()
    page.publish(scores(rule(), [{"i": "a"}], [1.0]))
    assert page.page() == b""
    page.flush()
    assert values(page.page(), "oa_y", by="i") == {"a": 1.0}


def test_the_gzipped_page_holds_the_same_bytes():
    page = ExpositionPage(extra=lambda: b"# HELP extra x\n# TYPE extra gauge\nextra 1.0\n")
    page.publish(scores(rule(), [{"i": str(i)} for i in range(100)], np.arange(100.0)))
    page.flush()
    assert gzip.decompress(page.page(gzipped=True)) == page.page()
    assert page.page().endswith(b"extra 1.0\n")
    assert len(samples(page.page())) == 101
