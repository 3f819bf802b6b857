"""Settings from OA_* variables and command-line overrides."""

from __future__ import annotations

import pytest

from oa_exporter.settings import DEFAULT_PORT, Settings


def test_defaults_without_environment():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.web_listen_address == f":{DEFAULT_PORT}"
    assert settings.rules == ()
    assert settings.insecure_skip_verify is False


def test_reads_oa_variables():
    settings = Settings.from_env({
        "OA_RULES": "rules/a.yaml, rules/extra/ ,,/etc/oa/*.yml",
        "OA_WEB_LISTEN_ADDRESS": "127.0.0.1:9999",
        "OA_LOG_LEVEL": "debug",
        "OA_PROMETHEUS_URL": "http://prom:9090",
        "OA_PROMETHEUS_TIMEOUT": "2.5",
        "OA_PROMETHEUS_RETRIES": "5",
        "OA_PROMETHEUS_HEADERS": "X-Scope-OrgID: team-a",
        "HOME": "/ignored",
    })
    assert settings.rules == ("rules/a.yaml", "rules/extra/", "/etc/oa/*.yml")
    assert settings.web_listen_address == "127.0.0.1:9999"
    assert settings.log_level == "debug"
    assert settings.prometheus_url == "http://prom:9090"
    assert settings.query_timeout == 2.5
    assert settings.query_retries == 5
    assert settings.headers == ("X-Scope-OrgID: team-a",)


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("YES", True), ("on", True),
                                               ("false", False), ("0", False), ("no", False)])
def test_booleans(raw, expected):
    assert Settings.from_env({"OA_PROMETHEUS_TLS_INSECURE_SKIP_VERIFY": raw}).insecure_skip_verify is expected


def test_an_empty_variable_means_the_default():
    assert Settings.from_env({"OA_LOG_LEVEL": "", "OA_RULES": ""}) == Settings()


def test_a_number_that_is_not_one_names_its_variable():
    with pytest.raises(ValueError, match="OA_PROMETHEUS_RETRIES='many': expected int"):
        Settings.from_env({"OA_PROMETHEUS_RETRIES": "many"})


def test_a_value_outside_the_choices_names_its_variable():
    with pytest.raises(ValueError, match="OA_LOG_LEVEL='verbose'"):
        Settings.from_env({"OA_LOG_LEVEL": "verbose"})


def test_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("OA_ARTIFACT_DIR", "/var/lib/oa")
    assert Settings.from_env().artifact_dir == "/var/lib/oa"


def test_overrides_replace_only_what_is_given():
    base = Settings.from_env({"OA_LOG_LEVEL": "warn", "OA_RULES": "a.yaml"})
    changed = base.with_overrides({"rules": ("b.yaml",), "log_level": None, "pool_workers": 2})
    assert changed.rules == ("b.yaml",)
    assert changed.log_level == "warn"
    assert changed.pool_workers == 2
    assert base.rules == ("a.yaml",)  # frozen: the original is untouched


def test_reads_the_artifact_store_variables():
    settings = Settings.from_env({
        "OA_ARTIFACT_STORE": "s3", "OA_S3_ENDPOINT": "http://minio:9000", "OA_S3_BUCKET": "models",
        "OA_S3_PREFIX": "oa/prod", "OA_S3_REGION": "eu-west-1", "OA_ARTIFACT_KEEP": "5", "OA_ARTIFACT_KEY": "s3cr3t",
    })
    assert (settings.artifact_store, settings.s3_endpoint, settings.s3_bucket) == ("s3", "http://minio:9000", "models")
    assert (settings.s3_prefix, settings.s3_region, settings.artifact_keep) == ("oa/prod", "eu-west-1", 5)
    assert settings.artifact_key == "s3cr3t"
    assert "s3cr3t" not in repr(settings)  # a logged Settings does not leak the signing key


def test_an_unknown_artifact_store_names_its_variable():
    with pytest.raises(ValueError, match="OA_ARTIFACT_STORE='gcs'"):
        Settings.from_env({"OA_ARTIFACT_STORE": "gcs"})


def test_presets_choose_the_adapters_and_explicit_settings_win():
    assert (Settings.from_env({}).dispatcher, Settings.from_env({}).artifact_store) == ("local", "local")
    enterprise = Settings.from_env({"OA_PRESET": "enterprise"})
    assert (enterprise.dispatcher, enterprise.artifact_store, enterprise.celery_broker) == (
        "celery", "s3", "redis://localhost:6379/0")
    mixed = Settings.from_env({"OA_PRESET": "enterprise", "OA_ARTIFACT_STORE": "local",
                               "OA_CELERY_BROKER": "amqp://guest:guest@mq:5672//"})
    assert (mixed.dispatcher, mixed.artifact_store, mixed.celery_broker) == (
        "celery", "local", "amqp://guest:guest@mq:5672//")
    assert Settings.from_env({"OA_PRESET": "standalone"}, preset="enterprise").dispatcher == "celery"  # the flag
    with pytest.raises(ValueError, match="OA_PRESET='big'"):
        Settings.from_env({"OA_PRESET": "big"})


def test_the_preset_flag_and_a_flag_over_it(monkeypatch):
    from oa_exporter.entrypoints.cli import _parser, _settings

    monkeypatch.delenv("OA_PRESET", raising=False)
    args = _parser().parse_args(["run", "--preset", "enterprise", "--dispatcher", "local"])
    settings = _settings(args)
    assert (settings.preset, settings.dispatcher, settings.artifact_store) == ("enterprise", "local", "s3")


def test_run_refuses_settings_that_cannot_work_with_a_clear_message(tmp_path, monkeypatch, capsys):
    from oa_exporter.entrypoints.cli import main

    for name in ("OA_PRESET", "OA_CELERY_BROKER", "OA_DISPATCHER", "OA_S3_BUCKET", "OA_ARTIFACT_STORE"):
        monkeypatch.delenv(name, raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text("groups: []\n")
    assert main(["run", "--rules", str(rules), "--dispatcher", "celery"]) == 2
    assert "not started: --dispatcher=celery needs a broker" in capsys.readouterr().err
    assert main(["run", "--rules", str(rules), "--preset", "enterprise"]) == 2
    assert "not started: --artifact.store=s3 needs a bucket" in capsys.readouterr().err
