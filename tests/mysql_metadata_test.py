"""ML Metadata in MySQL / MariaDB (`runtime.mysql_*`), as a production team would keep it.

The scenario runs the real demo against a private MariaDB server started for this module (its own
data directory, socket and port); it skips, naming what is missing, where no MariaDB / MySQL server
is installed (`apt-get install mariadb-server` provides one). The unreachable-server check needs none.
"""
import os
import shutil
import socket
import subprocess
import time

import pytest
from click.testing import CliRunner
from ml_metadata.metadata_store import metadata_store

from covid_cxr import cli
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import metadata

USER, PASSWORD = "mlmd", "not-the-default"


def _which(*names):
    for name in names:
        for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/local/sbin/{name}"):
            if path and os.access(path, os.X_OK):
                return path
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    server, install, client = _which("mariadbd", "mysqld"), _which("mariadb-install-db", "mysql_install_db"), \
        _which("mariadb", "mysql")
    if not (server and install and client):
        pytest.skip("no MariaDB / MySQL server installed (mariadbd, mariadb-install-db and mariadb not found)")
    base = tmp_path_factory.mktemp("mariadb")
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run([install, "--no-defaults", f"--datadir={base}/data", "--auth-root-authentication-method=normal",
                    "--skip-test-db", *as_root], check=True, capture_output=True)
    port, sock = _free_port(), str(base / "sock")
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([server, "--no-defaults", f"--datadir={base}/data", f"--socket={sock}", f"--port={port}",
                             "--bind-address=127.0.0.1", "--skip-name-resolve", *as_root], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([client, "-S", sock, "-u", "root", "-e", "SELECT 1"], capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"MariaDB did not start: {(base / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        subprocess.run([client, "-S", sock, "-u", "root", "-e",
                        f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO '{USER}'@'%';"],
                       check=True, capture_output=True)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _settings(port, **extra):
    values = {"runtime.mysql_host": "127.0.0.1", "runtime.mysql_port": str(port), "runtime.mysql_user": USER}
    values.update(extra)
    return values


def test_an_unreachable_database_fails_before_the_run_in_one_line(tmp_path):
    config = cfg.load_config("quick", overrides=_settings(_free_port()))
    with pytest.raises(cfg.ConfigError, match=r"^ML Metadata: cannot reach MySQL/MariaDB at 127\.0\.0\.1:\d+ "):
        metadata.check_connection(config)


def test_a_refused_login_is_one_line_naming_what_to_check(mariadb, monkeypatch):
    monkeypatch.setenv(metadata.MYSQL_PASSWORD_ENV, "wrong")
    with pytest.raises(cfg.ConfigError, match="refused user 'mlmd'.*COVID_CXR_MYSQL_PASSWORD") as info:
        metadata.check_connection(cfg.load_config("quick", overrides=_settings(mariadb)))
    assert "\n" not in str(info.value)


def test_the_demo_records_its_run_in_mariadb_with_the_password_from_the_environment(mariadb, tmp_path, monkeypatch):
    monkeypatch.setenv(metadata.MYSQL_PASSWORD_ENV, PASSWORD)
    # Where the run is recorded is under test, not what it learns (pipeline_e2e_test runs the demo as it
    # comes): the smallest demo data, no Tuner, two epochs, and a gate any model passes, so the run
    # still goes through every other component to a blessed, pushed model.
    smaller = {"runtime.mysql_database": "cxr_demo", "tuner.enabled": "false", "training.epochs": "2",
               "gate.min_sensitivity": "0", "gate.min_specificity": "0"}
    sets = [arg for key, value in _settings(mariadb, **smaller).items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(cli.main, ["demo", "--out", str(tmp_path), "--patients-per-class",
                                           str(cli.DEMO_MIN_PATIENTS_PER_CLASS), *sets])
    assert result.exit_code == 0, result.output
    assert "\nBLESSED" in result.output
    assert PASSWORD not in result.output
    assert not list(tmp_path.rglob("metadata.sqlite"))  # nothing fell back to SQLite
    config = cfg.load_config("quick", overrides=_settings(mariadb, **{
        "runtime.mysql_database": "cxr_demo", "runtime.pipeline_root": str(tmp_path / "root"),
        "runtime.serving_dir": str(tmp_path / "serving"), "model.task": "covid-vs-normal"}))
    store = metadata_store.MetadataStore(metadata.connection_config(config))
    assert {"Examples", "Model", "ModelBlessing", "PushedModel"} <= {t.name for t in store.get_artifact_types()}
    outcome = metadata.latest_outcome(config)
    assert outcome.blessed and outcome.pushed and outcome.destination.startswith(str(tmp_path / "serving"))
