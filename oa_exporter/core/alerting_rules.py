"""Prometheus alerting rules for anomaly rules: one alert per rule, its labels and annotations as templates.

The bundled AnomalyDetected alert (rules/alerts/openanomaly.yaml) covers every rule with one expression, so it
can only quote a rule's annotations (read back through oa_rule_annotation): Prometheus expands the templates
of an alert's own annotations, never those of text a query returns. Here each anomaly rule gets its own
alerting rule, in the same shape and under the same name, whose annotations are the rule's own: Prometheus
expands `{{ $labels.pod }}` and `{{ $value }}` in them per series, as in any alert it evaluates.
"""

from __future__ import annotations

from typing import Any

from .domain import Rule, RuleSet
from .durations import format_duration

ALERT = "AnomalyDetected"  # the bundled alert's name: Alertmanager routes written for it keep matching
GROUP = "openanomaly-rules"
DEFAULT_FOR = 300.0  # seconds above 1 before the alert fires, as the bundled alert waits


def alerting_rules(rules: RuleSet, wait: float = DEFAULT_FOR) -> dict[str, Any]:
    """A Prometheus rules file (as data) with one alerting rule per anomaly rule, in the rules' order; `wait` is
    the `for` of the rules that set none."""
    return {"groups": [{"name": GROUP, "rules": [alerting_rule(rule, wait) for rule in rules.rules]}]}


def alerting_rule(rule: Rule, wait: float = DEFAULT_FOR) -> dict[str, Any]:
    """The alert on one rule's score: the bundled AnomalyDetected narrowed to the rule, with its own text."""
    wait = wait if rule.alert_for is None else rule.alert_for
    score = f'oa_anomaly_score{{rule="{rule.name}"}} > 1'
    alert: dict[str, Any] = {
        "alert": ALERT,
        # a series without a severity label (the rule's labels are on every series it scores) gets "warning"
        "expr": f'label_replace({score}, "severity", "warning", "severity", "")',
    }
    if wait:
        alert["for"] = format_duration(wait)
    # the rule's name too (it is on every series already): promtool refuses alerts of one name and equal labels
    alert["labels"] = {"rule": rule.name, **rule.labels}
    alert["annotations"] = {**_default_annotations(rule, wait), **rule.annotations}
    return alert


def _default_annotations(rule: Rule, wait: float) -> dict[str, str]:
    """The bundled alert's text, for the keys the rule does not set itself."""
    held = f" for {format_duration(wait)}" if wait else ""
    return {
        "summary": f"Anomaly in {rule.name}: value outside its forecast band",
        "description": f'The series has scored {{{{ printf "%.2f" $value }}}} (1 = the edge of the band){held}. '
                       'Compare oa_y with oa_yhat_lower and oa_yhat_upper on the "OpenAnomaly / Rule detail" '
                       "dashboard.",
    }
