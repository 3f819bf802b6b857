"""The image (Dockerfile, .dockerignore, its health check) and the compose demo (deploy/compose). No Docker engine
runs here: the Dockerfile is linted with hadolint, the health check script runs against an HTTP server, the
compose file is checked against the repository, Prometheus's config with promtool, and the commands and
variables of the oa-exporter services with oa-exporter's own parser and Settings."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from oa_exporter.entrypoints.cli import main as cli
from tests.deploy import ROOT, assert_accepted_command, assert_settings_accept, tool
from tests.servers import free_port

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
ALERTS = ROOT / "rules" / "alerts" / "openanomaly.yaml"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(i.upper(), rest.strip()) for i, _, rest in (line.strip().partition(" ") for line in text.splitlines())
            if i]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction, args))
    return found


def exec_form(args: str) -> list[str]:
    return json.loads(args[args.index("["):])


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(pair.split("=", 1) for i, args in stage if i == "ENV" for pair in shlex.split(args))


# -- the Dockerfile --------------------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    done = subprocess.run([tool("hadolint"), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_fails_a_dockerfile_with_the_usual_faults(tmp_path):
    """The lint above can fail: an untagged base image running as root with unpinned packages does."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl && pip install oa-exporter\nCMD oa-exporter run\n")
    done = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1 and {"DL3006", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", done.stdout))


def test_image_is_multi_stage_slim_non_root_with_a_healthcheck_and_the_daemon_by_default():
    args = dict(a.split("=", 1) for i, a in instructions() if i == "ARG" and "=" in a)
    builder, final = stages()[0], stages()[-1]
    assert len(stages()) == 2 and builder[0][1].endswith(" AS builder")
    assert final[0][1].replace("${PYTHON_IMAGE}", args["PYTHON_IMAGE"]) == "python:3.11-slim"
    install = " ".join(a for i, a in final if i == "RUN")
    assert "from=builder" in install and "--no-index" in install  # only the builder's wheels, no compiler here
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("celery[redis,sqlalchemy]") for d in project)  # in every image: the worker roles
    run_builder = " ".join(a for i, a in builder if i == "RUN")
    assert re.search(r'if \[ -n "\$EXTRAS" \]; then [^;]*torch', run_builder)  # torch only with EXTRAS
    user = next(a for i, a in final if i == "USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    assert exec_form(next(a for i, a in final if i == "HEALTHCHECK")) == ["oa-healthcheck"]
    entrypoint = exec_form(next(a for i, a in final if i == "ENTRYPOINT"))
    command = exec_form(next(a for i, a in final if i == "CMD"))
    assert entrypoint == ["oa-exporter"]
    assert assert_accepted_command(command, "Dockerfile CMD") == "run"
    assert_settings_accept(env_of(final), "Dockerfile ENV")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins; a pattern that matches
    a parent folder matches what is inside)."""
    def regex(pattern: str) -> re.Pattern:
        parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
        table = {"**": ".*", "**/": "(.*/)?", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(table.get(p, re.escape(p)) for p in parts))

    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(regex(pattern.lstrip("!")).fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_else():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    copies = [a.split() for i, a in instructions() if i == "COPY" and "--from" not in a]
    sources = [s for words in copies for s in [w for w in words if not w.startswith("--")][:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        inside = (ROOT / source).rglob("*") if (ROOT / source).is_dir() else [ROOT / source]
        files = [str(p.relative_to(ROOT)) for p in inside if p.is_file() and "__pycache__" not in p.parts]
        for f in files:
            assert not dockerignored(f, patterns), f"{f} is copied by the Dockerfile but left out by .dockerignore"
    for unneeded in ("tests/unit/test_helm_chart.py", "bench/cycle.py", ".git/HEAD", "dashboards/build.py",
                     "oa_exporter/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(unneeded, patterns), unneeded


# -- the health check ------------------------------------------------------------------------------------------

def healthcheck_module():
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy" / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def daemon_health():
    """An HTTP server answering /-/healthy as the daemon does (200), anything else 503."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/-/healthy" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_asks_the_daemon_on_the_port_it_was_given(daemon_health, tmp_path):
    check = healthcheck_module().check
    daemon = ["/usr/local/bin/python3.11", "/usr/local/bin/oa-exporter", "run", "--rules", "/etc/oa-exporter/rules/"]
    assert check([*daemon, "--web.listen-address", f"127.0.0.1:{daemon_health}"], {}) == 0
    assert check([*daemon, f"--web.listen-address=:{daemon_health}"], {}) == 0
    assert check(daemon, {"OA_WEB_LISTEN_ADDRESS": f":{daemon_health}"}) == 0
    assert check([*daemon, "--web.listen-address", f":{free_port()}"], {}) == 1  # nothing listens there
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join(a.encode() for a in [*daemon, "--web.listen-address", ":10100"]) + b"\0")
    assert healthcheck_module().main_process_argv(str(cmdline)) == [*daemon, "--web.listen-address", ":10100"]


def test_healthcheck_passes_workers_which_serve_no_http():
    check = healthcheck_module().check
    worker = ["/usr/local/bin/python3.11", "/usr/local/bin/oa-exporter", "worker", "--queue", "training"]
    assert check(worker, {"OA_WEB_LISTEN_ADDRESS": f":{free_port()}"}) == 0


# -- the compose demo ------------------------------------------------------------------------------------------

def interpolate(value):
    """Compose's variable syntax with nothing set: ${VAR:-default} gives the default, $$ a literal $."""
    if isinstance(value, str):
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
        return re.sub(r"\$\{(\w+)\}", "", value).replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


def mounts(service: dict) -> list[tuple[Path, str]]:
    """(source in the repository, target in the container) of each bind mount."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out.append(((COMPOSE_DIR / source).resolve(), target))
    return out


def test_every_service_has_a_pinned_image_or_this_repository_build_and_its_mounts_exist(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            context = (COMPOSE_DIR / service["build"]["context"]).resolve()
            assert context == ROOT and (context / service["build"]["dockerfile"]).is_file(), name
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for source, target in mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) is not in the repository"
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], (name, dependency)


def test_prometheus_config_passes_promtool_with_the_alert_rules_as_mounted(compose, tmp_path):
    prometheus = compose["services"]["prometheus"]
    for source, target in mounts(prometheus):  # the container's files, rooted at tmp_path
        place = tmp_path / target.lstrip("/")
        place.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, place)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config = tmp_path / config_flag.split("=", 1)[1].lstrip("/")
    done = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"openanomaly\.yaml\s+SUCCESS: \d+ rules found", done.stdout), done.stdout  # rules loaded
    jobs = {j["job_name"]: j for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    exporter = jobs["oa-exporter"]
    assert exporter["honor_labels"] is True
    assert [t for c in exporter["static_configs"] for t in c["targets"]] == ["oa-exporter:10100"]
    assert "10100:10100" in compose["services"]["oa-exporter"]["ports"]
    assert [t for c in jobs["node"]["static_configs"] for t in c["targets"]] == ["node-exporter:9100"]
    down = next(r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "OpenAnomalyExporterDown")
    assert re.fullmatch(re.search(r'job=~"([^"]+)"', down["expr"])[1], "oa-exporter")


def test_grafana_is_provisioned_with_prometheus_and_every_dashboard(compose):
    grafana = compose["services"]["grafana"]
    by_target = {target: source for source, target in mounts(grafana)}
    provisioning = by_target["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert [(s["type"], s["url"], s["isDefault"]) for s in sources] == [("prometheus", "http://prometheus:9090", True)]
    provider = yaml.safe_load((provisioning / "dashboards" / "openanomaly.yaml").read_text())["providers"][0]
    dashboards = by_target[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards.glob("*.json")) == sorted(
        p.name for p in (ROOT / "dashboards").glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to(provider["options"]["path"])).is_file()


def test_oa_exporter_services_run_known_commands_against_the_demo_services(compose, capsys):
    services = compose["services"]
    roles = {}
    for name, service in services.items():
        if service.get("build"):
            roles[name] = assert_accepted_command(service["command"], f"compose {name}")
            environment = service["environment"]
            assert_settings_accept(environment, f"compose {name}")
            assert environment["OA_CELERY_BROKER"].split("/")[2].split(":")[0] in services
            assert environment["OA_S3_ENDPOINT"].split("/")[2].split(":")[0] in services
            assert environment["OA_PROMETHEUS_URL"].split("/")[2].split(":")[0] in services
            assert environment["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
            assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
            assert f"/{environment['OA_S3_BUCKET']}" in " ".join(services["minio-init"]["command"])
    assert sorted(roles.values()) == ["run", "worker"]
    assert services["oa-worker-training"]["command"][:3] == ["worker", "--queue", "training"]
    rules = [source for source, target in mounts(services["oa-exporter"]) if target.startswith("/etc/oa-exporter/")]
    assert rules and cli(["check", *map(str, rules)]) == 0, capsys.readouterr().err
