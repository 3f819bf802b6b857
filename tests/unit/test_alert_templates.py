"""Alert templates in a rule's annotations and labels: refused at `check` as Prometheus refuses them when it
loads an alert, and `oa-exporter rules alerts` writing one alert per rule with them as the alert's own text.
(tests/integration/test_operator_assets.py runs the same templates through promtool, and the written alerts
through a real Prometheus.)"""

from __future__ import annotations

import pytest
import yaml

from oa_exporter.core.alert_templates import template_error
from oa_exporter.entrypoints.cli import main
from tests.unit.harness import write_rules

ACCEPTED = [
    "plain text", "{{ $labels.pod }}", "{{ $labels.namespace }}/{{ $labels.pod }}", "{{ .Labels.pod }}",
    "{{ $value }}", "{{ $value | humanize }}", "{{ humanizeDuration $value }}", '{{ printf "%.2f" $value }}',
    "{{ $externalLabels.cluster }}", "{{ $externalURL }}", "{{ $ }}", "{{ . }}", "{{ .Value }}",
    '{{ with query "up" }}{{ . | first | value }}{{ end }}', '{{ if gt $value 1.0 }}high{{ else }}low{{ end }}',
    '{{ if eq $labels.a "x" }}x{{ else if eq $labels.a "y" }}y{{ else }}z{{ end }}',
    '{{ range $i, $e := query "up" }}{{ $i }}{{ $e.Labels.job }}{{ end }}',
    '{{ range query "up" }}{{ .Value }}{{ break }}{{ end }}', "{{- $labels.pod -}}", "{{ $labels.pod -}}",
    "{{/* a comment */}}x", "{{- /* a comment */ -}}x", "{{ $x := 1 }}{{ $x }}", "{{ $x := 1 }}{{ $x = 2 }}{{ $x }}",
    "{{ -3 }}", "{{ 1.5e3 }}", "{{ 0x1F }}", "{{ 0755 }}", "{{ 1_000 }}", "{{ 1i }}", "{{ 'a' }}", "{{ `raw` }}",
    '{{ "a\\tb" }}', "{{ (humanize $value) }}", '{{ $labels.pod | toUpper | printf "%s!" }}',
    '{{ define "x" }}in{{ end }}{{ template "x" . }}', '{{ block "b" . }}x{{ end }}', "{{ nil }}", "{{ true }}",
    "a }} b", "{ {x} }", "{{ . | }}", '{{ index $labels "a-b" }}', '{{ reReplaceAll "(.*):.*" "$1" $labels.instance }}',
    "{{ $labels.pod\n}}", "{{ if $labels.a }}\n{{ end }}", "{{ toTime $value }}", "{{ stripPort $labels.instance }}",
    "{{ len $labels }}", "{{ with $labels.a }}{{ . }}{{ else }}none{{ end }}",
]
REFUSED = [  # (template, what the error says, as Prometheus says it)
    ("{{ humanise $value }}", 'function "humanise" not defined'),
    ("{{ $label.pod }}", 'undefined variable "$label"'),
    ("{{ $labels.pod }", 'unexpected "}" in operand'),
    ("{{ $labels.pod", "unclosed action"),
    ("{{ if $value }}x", "unexpected EOF"),
    ("{{ end }}", "unexpected {{end}}"),
    ("{{ else }}", "unexpected {{else}}"),
    ("{{ if }}{{ end }}", "missing value for if"),
    ("{{ }}", "missing value for command"),
    ("{{ $x }}", 'undefined variable "$x"'),
    ('{{ "unterminated }}', "unterminated quoted string"),
    ("{{ `raw }}", "unterminated raw quoted string"),
    ("{{/* open }}", "unclosed comment"),
    ("{{/* c */ x }}", "comment ends before closing delimiter"),
    ("{{ ( $value }}", "unclosed left paren"),
    ("{{ $value ) }}", "unexpected right paren"),
    ("{{ break }}", "{{break}} outside {{range}}"),
    ("{{ 1 | 2 }}", "non executable command in pipeline stage 2"),
    ('{{ $value | "s" }}', "non executable command in pipeline stage 2"),
    ("{{ 3x }}", "bad number syntax"),
    ("{{ .a.b.c$ }}", "bad character U+0024"),
    ("{{ $x=1 }}", "bad character U+003D"),
    ("{{ if $value }}{{ else }}{{ else }}{{ end }}", "expected end; found {{else}}"),
    ('{{ "\\q" }}', "invalid syntax"),
    ("{{ 'ab' }}", "malformed character constant"),
    ("{{ + }}", "illegal number syntax"),
    ("{{ 08 }}", "integer overflow"),
    ("{{ 99999999999999999999 }}", "integer overflow"),
    ('{{ tmpl "x" . }}', 'function "tmpl" not defined'),  # consoles have it, alerts do not
    ("{{ range $a, $b, $c := . }}{{ end }}", "too many declarations in range"),
    ("{{ if true }}{{ $y := 2 }}{{ end }}{{ $y }}", 'undefined variable "$y"'),
    ("{{ with $x := 1 }}{{ $x }}{{ end }}{{ $x }}", 'undefined variable "$x"'),
    ("{{ template x }}", 'unexpected "x" in template clause'),
    ("{{ true.x }}", 'unexpected . after term "true"'),
    ("{{ $labels.pod }}{{ end }}", "unexpected {{end}}"),
    ("{{ . @ }}", 'unexpected "@" in operand'),
    ("{{- $labels.pod - }}", "illegal number syntax"),
    ("{{ if 1 }}{{ else if }}{{ end }}", "missing value for if"),
    ('{{ define "x" }}', "unexpected EOF"),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_templates_prometheus_loads_pass(text):
    assert template_error(text) is None


@pytest.mark.parametrize(("text", "message"), REFUSED, ids=[t for t, _ in REFUSED])
def test_templates_prometheus_refuses_are_refused_with_its_message(text, message):
    error = template_error(text)
    assert error is not None and message in str(error)


def test_the_error_names_the_line_of_the_text():
    error = template_error("first line\n{{ $labels.pod }}\n{{ humanise $value }}")
    assert error is not None and error.line == 3


RULES = """
groups:
  - name: k8s
    rules:
      - anomaly: cpu
        expr: sum by (namespace, pod) (rate(container_cpu_usage_seconds_total[5m]))
        labels: {team: platform}
        annotations:
          summary: "CPU of {{ $labels.namespace }}/{{ $labels.pod }} is unusual"
          runbook_url: https://runbooks.example/cpu
      - anomaly: restarts
        expr: sum by (namespace) (increase(kube_pod_container_status_restarts_total[15m]))
        for: 15m                  # the wait of its alert, as in a Prometheus alerting rule
        labels: {severity: critical}
        annotations:
          description: |
            Restarts in {{ $labels.namespace }}: {{ $value | printf "%.1f" }} times the usual.
            See the pods of {{ $labels.namespace }}.
"""


def test_check_reports_a_template_prometheus_would_refuse_at_file_and_line(tmp_path, capsys):
    path = write_rules(tmp_path / "rules.yaml", RULES.replace("$labels.pod }}", "$label.pod }}").replace(
        '| printf "%.1f" }}', '| printf "%.1f" }'))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f'{path}:8: rule "cpu": annotations: \'summary\' is not a valid Prometheus alert template: ' \
           'undefined variable "$label"' in err
    assert f'{path}:15: rule "restarts": annotations: \'description\' is not a valid Prometheus alert template ' \
           '(line 1 of its text): unexpected "}" in operand' in err


def test_check_accepts_the_templates_of_the_example_rules(tmp_path, capsys):
    assert main(["check", str(write_rules(tmp_path / "rules.yaml", RULES))]) == 0, capsys.readouterr().err


def test_rules_alerts_writes_one_alert_per_rule_with_its_labels_and_annotations(tmp_path, capsys):
    rules, out = write_rules(tmp_path / "rules.yaml", RULES), tmp_path / "alerts.yaml"
    assert main(["rules", "alerts", str(rules), "-o", str(out)]) == 0
    assert "2 alerts written" in capsys.readouterr().err
    [group] = yaml.safe_load(out.read_text())["groups"]
    cpu, restarts = group["rules"]
    assert cpu == {
        "alert": "AnomalyDetected",
        "expr": 'label_replace(oa_anomaly_score{rule="cpu"} > 1, "severity", "warning", "severity", "")',
        "for": "5m",
        "labels": {"rule": "cpu", "team": "platform"},
        "annotations": {
            "summary": "CPU of {{ $labels.namespace }}/{{ $labels.pod }} is unusual",  # as written: a template
            "description": 'The series has scored {{ printf "%.2f" $value }} (1 = the edge of the band) for 5m. '
                           'Compare oa_y with oa_yhat_lower and oa_yhat_upper on the "OpenAnomaly / Rule detail" '
                           "dashboard.",
            "runbook_url": "https://runbooks.example/cpu",
        },
    }
    assert restarts["labels"] == {"rule": "restarts", "severity": "critical"} and restarts["for"] == "15m"
    assert restarts["annotations"]["summary"] == "Anomaly in restarts: value outside its forecast band"
    assert restarts["annotations"]["description"] == (
        'Restarts in {{ $labels.namespace }}: {{ $value | printf "%.1f" }} times the usual.\n'
        "See the pods of {{ $labels.namespace }}.\n")
    assert "description: |\n" in out.read_text()  # several lines stay a block, as written


def test_rules_alerts_for_flag_and_stdout(tmp_path, capsys):
    rules = write_rules(tmp_path / "rules.yaml", RULES)
    assert main(["rules", "alerts", str(rules), "--for", "0"]) == 0
    [group] = yaml.safe_load(capsys.readouterr().out)["groups"]
    cpu, restarts = group["rules"]
    assert "for" not in cpu and "(1 = the edge of the band). Compare" in cpu["annotations"]["description"]
    assert restarts["for"] == "15m"  # the rule's own wins over the flag
    assert main(["rules", "alerts", str(rules), "--for", "soon"]) == 2
    assert "--for" in capsys.readouterr().err


def test_a_rule_s_for_is_a_duration_or_off(tmp_path, capsys):
    off = write_rules(tmp_path / "off.yaml", RULES.replace("for: 15m", "for: 0"))
    assert main(["rules", "alerts", str(off)]) == 0
    assert "for" not in yaml.safe_load(capsys.readouterr().out)["groups"][0]["rules"][1]
    bad = write_rules(tmp_path / "bad.yaml", RULES.replace("for: 15m", "for: soon"))
    assert main(["check", str(bad)]) == 1
    assert f'{bad}:12: rule "restarts": for: invalid duration' in capsys.readouterr().err


def test_rules_alerts_refuses_invalid_rules_files_as_check_does(tmp_path, capsys):
    rules = write_rules(tmp_path / "rules.yaml", RULES.replace("{{ $value |", "{{ $valu |"))
    out = tmp_path / "alerts.yaml"
    assert main(["rules", "alerts", str(rules), "-o", str(out)]) == 1
    assert 'undefined variable "$valu"' in capsys.readouterr().err and not out.exists()
    assert main(["rules", "alerts", str(tmp_path / "none*.yaml")]) == 1
