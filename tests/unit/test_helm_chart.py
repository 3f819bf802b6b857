"""The Helm chart deploy/helm/openanomaly, checked with real tools and no cluster: Helm's linter (helm-sdkpy, on
Python >= 3.12, and helm-python-sdk), Helm's renderer (helm-python-sdk: the templates rendered offline, as
`helm template` does), kubernetes-validate's schemas for every rendered object, promtool for the
PrometheusRule, and oa-exporter's own `check` and command-line parser for what the pods run."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmError

from oa_exporter.entrypoints.cli import main as cli
from tests.deploy import ROOT, assert_accepted_command, assert_settings_accept

CHART = ROOT / "deploy" / "helm" / "openanomaly"
ALERTS = ROOT / "rules" / "alerts" / "openanomaly.yaml"
CHART_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
PRESETS = {"default": {}} | {
    name: yaml.safe_load((CHART / f"values-{name}.yaml").read_text()) for name in ("standalone", "enterprise")
}
KUBERNETES = ("1.25.0", kubernetes_validate.utils.latest_version())  # the chart's kubeVersion floor, the newest
CRDS = {"ServiceMonitor", "PrometheusRule"}  # prometheus-operator's: checked below, not by kubernetes-validate
HELM_SDKPY = os.environ.get("HELM_SDKPY_PYTHON", str(Path.home() / ".cache/oa-exporter-ci/helm-sdkpy/bin/python"))
SDKPY_LINT = """
import asyncio, json, sys
import helm_sdkpy
config = helm_sdkpy.Configuration()
print(json.dumps({path: asyncio.run(helm_sdkpy.Lint(config).run(path)) for path in sys.argv[1:]}))
"""
ERROR, WARNING = 3, 2  # Helm's lint severities


def render(values: dict, release: str = "oa") -> list[dict]:
    """The chart's objects as `helm template` gives them (offline: `lookup` finds nothing)."""
    with Chart.load(CHART) as chart:
        files = chart.render(values, name=release, namespace="monitoring", is_install=True)
    return [doc for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(values) for name, values in PRESETS.items()}


def merged(base: dict, extra: dict) -> dict:
    """Helm's coalescing of a values file over the chart's values (maps merge, the rest is replaced)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects
            if o["kind"] in ("Deployment", "StatefulSet", "Job")}


def oa_containers(objects: list[dict]) -> dict[str, dict]:
    """The containers that run the oa-exporter image, by Deployment name."""
    image = CHART_VALUES["image"]["repository"]
    return {name: c for name, spec in pod_specs(objects).items() for c in spec["containers"]
            if c["image"].split(":")[0] == image}


def env(container: dict) -> dict[str, str]:
    """The container's environment; a value from a Secret reads as 'secret:NAME/KEY'."""
    return {e["name"]: e.get("value") or "secret:{name}/{key}".format(**e["valueFrom"]["secretKeyRef"])
            for e in container.get("env", [])}


# -- linters -------------------------------------------------------------------------------------------------

def test_helm_sdkpy_lints_the_chart_with_each_preset(tmp_path):
    if not Path(HELM_SDKPY).exists():
        message = f"no helm-sdkpy interpreter at {HELM_SDKPY} (Python >= 3.12 venv; .ci/run makes it)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    paths = []
    for name, values in PRESETS.items():  # helm-sdkpy's lint takes no values: a copy with the preset's merged in
        copy = tmp_path / name / "openanomaly"
        shutil.copytree(CHART, copy)  # the links to rules/ are copied as the files they point to
        (copy / "values.yaml").write_text(yaml.safe_dump(merged(CHART_VALUES, values)))
        paths.append(str(copy))
    done = subprocess.run([HELM_SDKPY, "-c", SDKPY_LINT, *paths], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for path, report in json.loads(done.stdout).items():
        assert report["TotalChartsLinted"] == 1 and not report["Errors"], (path, report)
        assert all(m["Severity"] < WARNING for m in report["Messages"]), (path, report["Messages"])


@pytest.mark.parametrize(("chart", "values"), [*((CHART, v) for v in PRESETS.values()),
                                               (CHART / "charts" / "redis", {}), (CHART / "charts" / "minio", {})],
                         ids=[*PRESETS, "redis", "minio"])
def test_chart_and_subcharts_lint_strictly(chart, values):
    report = lint(chart, values, strict=True, kube_version="v1.25.0")
    assert report["total_charts_linted"] == 1 and not report["errors"], report
    assert all(m["severity"] < WARNING for m in report["messages"]), report["messages"]


def test_helm_sdkpy_lint_finds_a_broken_template(tmp_path):
    """The linter above fails on a template that cannot render (so its passing means something)."""
    if not Path(HELM_SDKPY).exists():
        pytest.skip("covered by the failure of test_helm_sdkpy_lints_the_chart_with_each_preset")
    copy = tmp_path / "openanomaly"
    shutil.copytree(CHART, copy)
    with (copy / "templates" / "service.yaml").open("a") as f:
        f.write("  sessionAffinity: {{ .Values.no.such.value }}\n")
    done = subprocess.run([HELM_SDKPY, "-c", SDKPY_LINT, str(copy)], capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)[str(copy)]
    assert any(m["Severity"] == ERROR for m in report["Messages"]), report


# -- rendered objects ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered, version):
    seen = set()
    for preset, objects in rendered.items():
        for obj in objects:
            seen.add(obj["kind"])
            if obj["kind"] in CRDS:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{preset}: {obj['kind']} {obj['metadata']['name']}: {e.message} "
                                     f"at {'/'.join(map(str, e.path))}") from None
    assert {"Deployment", "Service", "ConfigMap", "Secret", "Job", "PersistentVolumeClaim"} <= seen


def test_presets_deploy_the_roles_they_describe(rendered):
    roles = {preset: sorted(" ".join(c["args"][:3]) for c in oa_containers(objects).values())
             for preset, objects in rendered.items()}
    assert roles["default"] == roles["standalone"] == ["run --rules /etc/oa-exporter/rules/"]
    assert roles["enterprise"] == ["run --rules /etc/oa-exporter/rules/", "worker --queue inference",
                                   "worker --queue training"]
    standalone = oa_containers(rendered["standalone"])["oa-openanomaly"]
    assert env(standalone)["OA_DISPATCHER"] == "local" and env(standalone)["OA_ARTIFACT_STORE"] == "local"
    claim = pod_specs(rendered["standalone"])["oa-openanomaly"]["volumes"]
    data = next(v for v in claim if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] in by_kind(rendered["standalone"], "PersistentVolumeClaim")
    bundled = {o["metadata"]["name"] for o in rendered["enterprise"] if o["kind"] == "Deployment"}
    assert {"oa-redis", "oa-minio"} <= bundled
    for preset in ("default", "standalone"):  # tags.infrastructure is off: no Redis, no MinIO
        assert not {o["metadata"]["name"] for o in rendered[preset]} & {"oa-redis", "oa-minio"}


def test_workers_run_only_with_the_celery_dispatcher():
    own = {"celery": {"broker": "amqp://guest:guest@rabbitmq:5672//"},
           "artifacts": {"store": "s3", "s3": {"bucket": "models", "endpoint": "https://s3.example"}}}
    local = oa_containers(render({"dispatcher": "local", "workers": {"training": {"enabled": True}}}))
    celery = oa_containers(render({"dispatcher": "celery", **own}))
    assert sorted(local) == ["oa-openanomaly"]
    assert sorted(celery) == ["oa-openanomaly", "oa-openanomaly-worker-inference", "oa-openanomaly-worker-training"]
    assert {env(c)["OA_CELERY_BROKER"] for c in celery.values()} == {own["celery"]["broker"]}
    assert "REDIS_PASSWORD" not in env(celery["oa-openanomaly"])  # no bundled Redis, no password from it


def test_every_command_and_variable_of_the_pods_is_one_oa_exporter_takes(rendered):
    for preset, objects in rendered.items():
        for name, container in oa_containers(objects).items():
            where = f"{preset}: {name}"
            assert_accepted_command(container["args"], where)
            assert_settings_accept(env(container), where)


def test_what_the_pods_reference_is_in_the_release(rendered):
    """Secrets, ConfigMaps, claims, Services and the bucket the pods use are all rendered by the chart."""
    for preset, objects in rendered.items():
        names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        for pod, spec in pod_specs(objects).items():
            for volume in spec.get("volumes", []):
                for kind, key, field in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name"),
                                         ("PersistentVolumeClaim", "persistentVolumeClaim", "claimName")):
                    if key in volume:
                        assert (kind, volume[key][field]) in names, (preset, pod, volume)
            for container in spec["containers"]:
                variables = env(container)
                for value in variables.values():
                    if value.startswith("secret:"):
                        secret, key = value[len("secret:"):].split("/")
                        rendered_secret = by_kind(objects, "Secret").get(secret)
                        assert rendered_secret and key in rendered_secret["data"], (preset, pod, value)
                    for used in re.findall(r"\$\((\w+)\)", value):  # Kubernetes expands $(VAR) of earlier vars
                        assert used in variables, (preset, pod, value)
    enterprise = rendered["enterprise"]
    daemon = env(oa_containers(enterprise)["oa-openanomaly"])
    services = {n: s["spec"]["ports"][0]["port"] for n, s in by_kind(enterprise, "Service").items()}
    broker = re.fullmatch(r"redis://:\$\(REDIS_PASSWORD\)@([\w-]+):(\d+)/0", daemon["OA_CELERY_BROKER"])
    assert broker and services[broker[1]] == int(broker[2])
    s3 = re.fullmatch(r"http://([\w-]+):(\d+)", daemon["OA_S3_ENDPOINT"])
    assert s3 and services[s3[1]] == int(s3[2])
    job = next(o for o in enterprise if o["kind"] == "Job")
    assert env(job["spec"]["template"]["spec"]["containers"][0])["BUCKET"] == daemon["OA_S3_BUCKET"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def test_rules_are_a_configmap_directory_that_oa_exporter_check_accepts(rendered, tmp_path, capsys):
    for preset in ("standalone", "enterprise"):
        objects = rendered[preset]
        container = oa_containers(objects)["oa-openanomaly"]
        assert container["args"][:3] == ["run", "--rules", "/etc/oa-exporter/rules/"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/oa-exporter/rules")
        assert "subPath" not in mount  # a subPath mount would never see an edit of the ConfigMap
        volume = next(v for v in pod_specs(objects)["oa-openanomaly"]["volumes"] if v["name"] == mount["name"])
        files = by_kind(objects, "ConfigMap")[volume["configMap"]["name"]]["data"]
        assert sorted(files) == sorted(PRESETS[preset]["rules"]["examples"])
        for name, text in files.items():
            assert yaml.safe_load(text) == yaml.safe_load((ROOT / "rules" / "anomaly" / name).read_text())
            (tmp_path / preset).mkdir(exist_ok=True)
            (tmp_path / preset / name).write_text(text)
        assert cli(["check", str(tmp_path / preset)]) == 0, capsys.readouterr().err
    mine = "groups:\n  - name: mine\n    rules:\n      - anomaly: up_count\n        expr: count(up)\n"
    data = by_kind(render({"rules": {"files": {"mine.yaml": mine}}}), "ConfigMap")["oa-openanomaly-rules"]["data"]
    assert data == {"mine.yaml": mine.rstrip("\n")}


def test_prometheus_rule_carries_the_shipped_alert_rules_and_the_scrape_matches_them(rendered, tmp_path):
    enterprise = rendered["enterprise"]
    rule = next(iter(by_kind(enterprise, "PrometheusRule").values()))
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]  # one source: rules/alerts
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    check = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    monitor = next(iter(by_kind(enterprise, "ServiceMonitor").values()))
    service = next(s for s in by_kind(enterprise, "Service").values()
                   if s["spec"]["selector"] == monitor["spec"]["selector"]["matchLabels"])
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]  # prometheus-operator's job label
    down = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "OpenAnomalyExporterDown")
    assert re.fullmatch(re.search(r'job=~"([^"]+)"', down["expr"])[1], job), (job, down["expr"])


MINE = """
groups:
  - name: mine
    rules:
      - anomaly: up_count
        expr: count(up)
        for: 15m
        labels: {team: web, severity: critical}
        annotations: {summary: "{{ $value }} targets are up", runbook_url: "https://runbooks.example/up"}
      - anomaly: up_now
        expr: count(up)
        for: 0
"""


def test_rule_alerts_are_the_alerts_oa_exporter_writes_for_the_chart_s_rules(tmp_path, capsys):
    examples = ["node.yaml", "kubernetes.yaml", "http-red.yaml"]
    values = {"prometheusRule": {"enabled": True, "ruleAlerts": True},
              "rules": {"examples": examples, "files": {"mine.yaml": MINE}}}
    rule = next(iter(by_kind(render(values), "PrometheusRule").values()))
    (tmp_path / "mine.yaml").write_text(MINE)
    files = [str(CHART / "files" / "rules" / name) for name in examples] + [str(tmp_path / "mine.yaml")]
    assert cli(["rules", "alerts", *files, "-o", str(tmp_path / "alerts.yaml")]) == 0, capsys.readouterr().err
    written = yaml.safe_load((tmp_path / "alerts.yaml").read_text())["groups"]
    bundled = yaml.safe_load(ALERTS.read_text())["groups"]
    assert rule["spec"]["groups"] == written + [g for g in bundled if g["name"] != "openanomaly-anomalies"]
    up_count, up_now = written[0]["rules"][-2:]
    assert up_count["for"] == "15m" and "for" not in up_now
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    check = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_rule_alerts_need_the_chart_s_own_rules():
    with pytest.raises(HelmError, match="oa-exporter rules alerts"):
        render({"prometheusRule": {"enabled": True, "ruleAlerts": True}, "rules": {"existingConfigMap": "mine"}})


def test_secrets_come_from_the_chart_or_an_existing_secret():
    key = "a-signing-key-of-mine"
    objects = render({"secret": {"artifactKey": key}})
    secret = by_kind(objects, "Secret")["oa-openanomaly"]
    assert base64.b64decode(secret["data"]["artifact-key"]).decode() == key
    generated = base64.b64decode(by_kind(render({}), "Secret")["oa-openanomaly"]["data"]["artifact-key"])
    assert len(generated) >= 32
    theirs = render({"secret": {"existingSecret": "oa-keys"}, "artifacts": {"store": "s3", "s3": {"bucket": "b"}}})
    assert not by_kind(theirs, "Secret")
    daemon = env(oa_containers(theirs)["oa-openanomaly"])
    assert daemon["AWS_ACCESS_KEY_ID"] == "secret:oa-keys/s3-access-key-id"
    volumes = pod_specs(theirs)["oa-openanomaly"]["volumes"]
    assert next(v for v in volumes if "secret" in v)["secret"]["secretName"] == "oa-keys"


@pytest.mark.parametrize(("values", "message"), [
    ({"dispatcher": "celery", "artifacts": {"store": "s3", "s3": {"bucket": "b"}}}, "celery.broker"),
    ({"dispatcher": "celery", "celery": {"broker": "redis://r:6379/0"}}, "artifacts.store s3"),
    ({"artifacts": {"store": "s3"}}, "artifacts.s3.bucket"),
    ({"output": {"mode": "remote-write"}}, "output.remoteWriteUrls"),
    ({"rules": {"examples": ["nodes.yaml"]}}, "no example rules file"),
])
def test_settings_that_cannot_work_are_refused_with_what_to_set(values, message):
    with pytest.raises(HelmError, match=re.escape(message)):
        render(values)


# -- shards --------------------------------------------------------------------------------------------------

SHARDED = {"shards": 3, "persistence": {"enabled": True},
           "artifacts": {"store": "s3", "s3": {"bucket": "models", "endpoint": "https://s3.example"}},
           "serviceMonitor": {"enabled": True}}


@pytest.mark.parametrize("version", KUBERNETES)
def test_shards_deploy_a_statefulset_whose_pods_read_the_count_from_a_configmap(version):
    objects = render(SHARDED)
    for obj in objects:
        if obj["kind"] not in CRDS:
            kubernetes_validate.validate(obj, version, strict=True)
    [daemon] = by_kind(objects, "StatefulSet").values()
    assert daemon["spec"]["replicas"] == 3 and "oa-openanomaly" not in by_kind(objects, "Deployment")
    assert daemon["spec"]["serviceName"] in by_kind(objects, "Service")
    assert by_kind(objects, "Service")[daemon["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    [claim] = daemon["spec"]["volumeClaimTemplates"]  # one claim per shard, none shared
    assert claim["metadata"]["name"] == "data" and not by_kind(objects, "PersistentVolumeClaim")
    pod = daemon["spec"]["template"]["spec"]
    [container] = pod["containers"]
    variables = env(container)
    assert_accepted_command(container["args"], "sharded")
    assert_settings_accept(variables, "sharded")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "shards")
    assert variables["OA_SHARD_COUNT_FILE"] == mount["mountPath"] + "/count"
    source = next(v for v in pod["volumes"] if v["name"] == "shards")["configMap"]["name"]
    assert by_kind(objects, "ConfigMap")[source]["data"] == {"count": "3"}
    # the ServiceMonitor selects the daemon Service only: every replica is scraped once
    [monitor] = by_kind(objects, "ServiceMonitor").values()
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [name for name, s in by_kind(objects, "Service").items()
                if wanted.items() <= s["metadata"]["labels"].items()]
    assert selected == ["oa-openanomaly"]
    report = lint(CHART, SHARDED, strict=True, kube_version="v1.25.0")
    assert not report["errors"] and all(m["severity"] < WARNING for m in report["messages"]), report


def test_one_shard_stays_a_deployment_and_impossible_layouts_are_refused():
    assert "oa-openanomaly" in by_kind(render({"shards": 1}), "Deployment")
    with pytest.raises(HelmError, match="existingClaim"):
        render({"shards": 2, "persistence": {"enabled": True, "existingClaim": "mine"}})


def test_shards_with_celery_workers_are_a_statefulset_beside_the_workers():
    objects = render({**SHARDED, "dispatcher": "celery", "celery": {"broker": "redis://r:6379/0"}})
    [daemon] = by_kind(objects, "StatefulSet").values()
    assert daemon["spec"]["replicas"] == 3
    workers = sorted(name for name in by_kind(objects, "Deployment") if "worker" in name)
    assert workers == ["oa-openanomaly-worker-inference", "oa-openanomaly-worker-training"]
    [container] = daemon["spec"]["template"]["spec"]["containers"]
    assert env(container)["OA_DISPATCHER"] == "celery" and "OA_SHARD_COUNT_FILE" in env(container)
    assert_settings_accept(env(container), "sharded celery")


def test_the_dask_dispatcher_names_its_scheduler_and_shards_with_it():
    [container] = oa_containers(render({**SHARDED, "dispatcher": "dask",
                                        "dask": {"scheduler": "tcp://dask:8786"}})).values()
    assert env(container)["OA_DISPATCHER"] == "dask" and env(container)["OA_DASK_SCHEDULER"] == "tcp://dask:8786"
    assert_settings_accept(env(container), "dask")
    with pytest.raises(HelmError, match="dask.scheduler"):
        render({"dispatcher": "dask"})


def test_a_web_config_secret_guards_the_port_and_the_service_monitor_follows():
    values = {"serviceMonitor": {"enabled": True, "tlsConfig": {"ca": {"secret": {"name": "oa-web", "key": "ca.crt"}},
                                                                "serverName": "oa-openanomaly"},
                                 "basicAuth": {"secretName": "oa-scraper"}},
              "web": {"configSecret": "oa-web", "tls": True, "enableLifecycle": True}}
    objects = render(values)
    daemon = oa_containers(objects)["oa-openanomaly"]
    assert daemon["args"][daemon["args"].index("--web.config.file") + 1] == "/etc/oa-exporter/web/web-config.yml"
    assert "--web.enable-lifecycle" in daemon["args"]
    mount = next(m for m in daemon["volumeMounts"] if m["name"] == "web-config")
    volume = next(v for v in pod_specs(objects)["oa-openanomaly"]["volumes"] if v["name"] == "web-config")
    assert mount["mountPath"] == "/etc/oa-exporter/web" and volume["secret"]["secretName"] == "oa-web"
    assert all("tcpSocket" in daemon[p] for p in ("livenessProbe", "readinessProbe", "startupProbe"))
    [endpoint] = next(iter(by_kind(objects, "ServiceMonitor").values()))["spec"]["endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"]["ca"]["secret"]["name"] == "oa-web"
    assert endpoint["basicAuth"] == {"username": {"name": "oa-scraper", "key": "username"},
                                     "password": {"name": "oa-scraper", "key": "password"}}
    for obj in objects:
        if obj["kind"] not in CRDS:
            kubernetes_validate.validate(obj, KUBERNETES[-1], strict=True)


def test_without_a_web_config_the_port_is_plain_http():
    objects = render({"serviceMonitor": {"enabled": True}})
    daemon = oa_containers(objects)["oa-openanomaly"]
    assert "--web.config.file" not in daemon["args"] and daemon["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    [endpoint] = next(iter(by_kind(objects, "ServiceMonitor").values()))["spec"]["endpoints"]
    assert "scheme" not in endpoint and "basicAuth" not in endpoint


CELERY = {"dispatcher": "celery", "celery": {"broker": "amqp://guest:guest@rabbitmq:5672//"},
          "artifacts": {"store": "s3", "s3": {"bucket": "models", "endpoint": "https://s3.example"}}}


def test_a_web_config_secret_guards_the_workers_ports_too():
    objects = render({**CELERY, "web": {"configSecret": "oa-web", "configKey": "web.yml"}})
    workers = {name: c for name, c in oa_containers(objects).items() if "worker" in name}
    assert sorted(workers) == ["oa-openanomaly-worker-inference", "oa-openanomaly-worker-training"]
    for name, worker in workers.items():
        assert worker["args"][worker["args"].index("--web.config.file") + 1] == "/etc/oa-exporter/web/web.yml"
        assert_accepted_command(worker["args"], name)
        mount = next(m for m in worker["volumeMounts"] if m["name"] == "web-config")
        volume = next(v for v in pod_specs(objects)[name]["volumes"] if v["name"] == "web-config")
        assert mount["mountPath"] == "/etc/oa-exporter/web" and mount["readOnly"]
        assert volume["secret"]["secretName"] == "oa-web"
        assert worker["livenessProbe"]["tcpSocket"] == {"port": "metrics"}  # /-/healthy is behind TLS and auth
    for obj in objects:
        if obj["kind"] not in CRDS:
            kubernetes_validate.validate(obj, KUBERNETES[-1], strict=True)


def test_without_a_web_config_the_workers_ports_are_plain_http():
    workers = [c for name, c in oa_containers(render(CELERY)).items() if "worker" in name]
    assert len(workers) == 2
    for worker in workers:
        assert "--web.config.file" not in worker["args"] and worker["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
        assert not any(m["name"] == "web-config" for m in worker["volumeMounts"])


def test_allowed_hosts_reach_the_daemon():
    daemon = oa_containers(render({"web": {"allowedHosts": ["oa.example.com", "*.monitoring.svc"]}}))["oa-openanomaly"]
    assert_accepted_command(daemon["args"], "daemon")
    hosts = [daemon["args"][i + 1] for i, arg in enumerate(daemon["args"]) if arg == "--web.allowed-hosts"]
    assert hosts == ["oa.example.com", "*.monitoring.svc"]
    assert "--web.allowed-hosts" not in oa_containers(render({}))["oa-openanomaly"]["args"]
