"""README promises: secret params, space {}, search.timeout, --quiet, refit --trial, ablation resume, MLflow spool, server stop, --auth."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import pytest
import requests
from mlflow import MlflowClient

from helpers.services import free_port, wait_for
from helpers.specs import tiny_spec, write_spec

NO_PROMPTS = {"prompts": []}  # no generation: these tests are about what runs, not what it says


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _local(folder: Path) -> MlflowClient:
    return _client(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")


def _runs(c: MlflowClient, role: str) -> list:
    exp = c.get_experiment_by_name("tiny")
    return c.search_runs([exp.experiment_id], f"tags.`afina.role` = '{role}'", order_by=["attributes.start_time ASC"])


def _env(**extra: str) -> dict[str, str]:
    """A subprocess's environment as a user's shell has it: no test stores, MLflow's own server defaults."""
    out = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in ("AFINA_OPTUNA_STORAGE", "AFINA_TRACKING_URI", "MLFLOW_TRACKING_URI", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"):
        out.pop(key, None)
    return out | extra


# --------------------------------------------------------------------------- secrets


def test_params_named_password_secret_or_api_key_are_logged_as_stars(tmp_path):
    from afina import tracking

    uri = f"sqlite:///{tmp_path}/m.db"
    c = tracking.client(uri)
    run = c.create_run(c.create_experiment("x", artifact_location=tmp_path.as_uri())).info.run_id
    secret = {
        "db.password": "hunter2-pw-91",
        "judge.client_secret": "s3cr3t-value-42",
        "openai_api_key": "sk-live-77abc",
        "service.API_KEY": "AK-555-xyz",
    }
    plain = {"train.learning_rate": 0.001, "slices.faq.include": True, "model.ref": "tiny-random"}
    tracking.log_params(c, run, {**secret, **plain})
    params = _client(uri).get_run(run).data.params
    assert {k: params[k] for k in secret} == dict.fromkeys(secret, "***")
    assert params["train.learning_rate"] == "0.001" and params["slices.faq.include"] == "true" and params["model.ref"] == "tiny-random"
    stored = (tmp_path / "m.db").read_bytes()  # not in the store at all, under any name
    assert not [v for v in secret.values() if v.encode() in stored]


# --------------------------------------------------------------------------- space: {} and search.timeout


def test_an_empty_space_trains_the_fixed_settings_n_trials_times(project, cli):
    spec = tiny_spec(search={"n_trials": 2, "space": {}}, samples=NO_PROMPTS)
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    trials = _study(project).get_trials()
    # every trial trains the same settings: none is taken for a repeated draw and skipped
    assert [(t.number, t.state.name, t.params) for t in trials] == [(0, "COMPLETE", {}), (1, "COMPLETE", {})], [
        (t.number, t.state.name, t.user_attrs) for t in trials
    ]
    runs = _runs(_local(project), "trial")
    assert len(runs) == 2 and {r.data.tags["afina.searched"] for r in runs} == {"none"}
    trained = [{k: v for k, v in r.data.params.items() if k.startswith(("train.", "lora."))} for r in runs]
    assert trained[0] == trained[1] and trained[0]["train.max_steps"] == "4"
    assert "tiny · 2 trials" in out


def test_search_timeout_stops_starting_trials(project, cli):
    spec = tiny_spec(search={"n_trials": 4, "timeout": 1}, samples=NO_PROMPTS)
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    trials = _study(project).get_trials()
    assert 1 <= len(trials) < 4 and all(t.state.name == "COMPLETE" for t in trials), [(t.number, t.state.name) for t in trials]
    first = trials[0].datetime_start
    # no trial started after the second the worker had (counted from just before trial 0)
    assert max((t.datetime_start - first).total_seconds() for t in trials) <= 1.0
    assert f"tiny · {len(trials)} trials" in out and "all 4 trials are done" not in out


# --------------------------------------------------------------------------- --quiet and refit --trial N


def _afina(*args: str) -> tuple[int, str, str]:
    """`afina ARGS` in this process, outside any test (module fixtures): (exit code, stdout, stderr)."""
    from afina.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["afina", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def two_trials(tmp_path_factory, afina_cache):
    """Trial 0 by a plain `afina sweep`, trial 1 by `afina --quiet sweep --n-trials 2`; no budget (so no refit)."""
    folder = tmp_path_factory.mktemp("two")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for key in ("AFINA_OPTUNA_STORAGE", "AFINA_TRACKING_URI", "MLFLOW_TRACKING_URI"):
            mp.delenv(key, raising=False)
        mp.setenv("AFINA_VERBOSITY", "normal")  # the CLI sets it per call; restored afterwards
        path = write_spec(folder, tiny_spec(search={"n_trials": 1}, samples=NO_PROMPTS))
        plain = _afina("sweep", path)
        quiet = _afina("--quiet", "sweep", path, "--n-trials", "2")
        yield folder, path, plain, quiet


def test_quiet_turns_the_progress_display_off(two_trials):
    _, _, (code1, plain, err1), (code2, quiet, err2) = two_trials
    assert code1 == 0 and code2 == 0, err1 + err2
    # without --quiet the display's last state is printed (a non-terminal gets no live redraws)
    assert "trials · best" in plain and "1/1" in plain, plain
    assert "tiny · 1 trials" in plain
    # with it: no display, the results still
    assert "trials · best" not in quiet and "━━━" not in quiet.split("tiny · 2 trials")[0], quiet
    assert "tiny · 2 trials" in quiet and "best trial" in quiet


def test_refit_trial_n_refits_the_chosen_trial(two_trials, cli, monkeypatch):
    folder, path, *_ = two_trials
    monkeypatch.chdir(folder)
    trials = sorted(_study(folder).get_trials(), key=lambda t: t.value)
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials) and trials[0].value < trials[1].value
    best, other = trials
    spec = tiny_spec(search={"n_trials": 2}, samples=NO_PROMPTS, budget={"refit": 0.2})  # a budget added after the sweep
    write_spec(folder, spec)

    code, out, err = cli("refit", path, "--trial", "7")
    assert code == 2 and "has no trial 7 (trials 0-1)" in err, err  # one message for refit and promote (search/winner_refit.pick)
    code, out, err = cli("refit", path, "--trial", str(other.number))
    assert code == 0, err
    assert f"refit of trial {other.number}: its configuration for 2 steps" in out, out
    record = _study(folder).user_attrs["refit"]
    assert record["state"] == "COMPLETE" and record["of"] == other.number and record["steps"] == 2
    assert record["of_run_id"] == other.user_attrs["mlflow_run_id"]
    (run,) = _runs(_local(folder), "refit")
    assert run.info.run_id == record["run_id"] and run.data.tags["afina.refit_of"] == str(other.number)
    lr = float(run.data.params["train.learning_rate"])  # the chosen trial's configuration, not the best one's
    assert lr == pytest.approx(other.params["train.learning_rate"]) and lr != pytest.approx(best.params["train.learning_rate"])
    assert run.data.params["train.max_steps"] == "2"


# --------------------------------------------------------------------------- an interrupted ablation


def _finished_ablations(folder: Path) -> int:
    """Ablation runs that finished with results, read-only from the MLflow store a subprocess writes."""
    db = folder / "mlruns" / "mlflow.db"
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM tags WHERE key = 'afina.results'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.drill  # a real `afina ablate` process, interrupted
def test_an_interrupted_ablation_resumes_reusing_its_finished_runs(project, cli):
    spec = tiny_spec(search={"n_trials": 1}, samples=NO_PROMPTS)  # searches slices.poesia.include: 2 arms
    path = write_spec(project, spec)
    code, _, err = cli("sweep", path, "--no-progress")
    assert code == 0, err

    log = project / "ablate.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "afina", "ablate", str(path), "--seeds", "2"],
        cwd=project,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,
    )
    try:
        wait_for(lambda: _finished_ablations(project) >= 2 or proc.poll() is not None, 300, "two finished ablation runs")
        proc.send_signal(signal.SIGINT)  # Ctrl-C during the third of 4 runs
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    c = _local(project)
    before = {
        (r.data.tags["afina.arm"], r.data.tags["afina.seed"]): r.info.run_id
        for r in _runs(c, "ablation")
        if r.data.tags.get("afina.state") == "COMPLETE"
    }
    assert 2 <= len(before) < 4, f"the interrupt came too late to test a resume: {before}"
    assert "ablation 2/4" in log.read_text() and "ablation 4/4" not in log.read_text()
    assert not [r for r in _runs(c, "ablation") if r.info.status == "RUNNING"]

    code, out, err = cli("ablate", path, "--seeds", "2")
    assert code == 0, err
    for i in range(1, len(before) + 1):  # the finished runs are reused, not trained again
        assert f"ablation {i}/4" not in out, out
    assert "ablation 4/4" in out
    done = [r for r in _runs(c, "ablation") if r.data.tags.get("afina.state") == "COMPLETE"]
    assert len(done) == 4, [(r.data.tags["afina.arm"], r.data.tags["afina.seed"]) for r in done]
    summary = _study(project).user_attrs["verdicts"]["ablation"]
    assert len(summary["runs"]) == 4 and summary["failed"] == 0
    assert all(summary["runs"][f"{arm}|{seed}"] == rid for (arm, seed), rid in before.items())
    assert summary["rows"] and summary["noise"]["eval_loss"]["n"] == 2


# --------------------------------------------------------------------------- afina server


def _start_server(folder: Path, port: int, *extra: str, **env: str) -> subprocess.Popen:
    """`afina server` on SQLite, as a user starts it; returns once /health answers."""
    log = folder / f"server-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "afina", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
        + ["--artifacts-destination", str(folder / "server-artifacts"), "--port", str(port), "--workers", "1", *extra],
        cwd=folder,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=_env(**env),
        start_new_session=True,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"afina server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
        return False

    try:
        wait_for(up, 180, "afina server to answer", every=0.3)
    except BaseException:
        _kill(proc)
        raise
    return proc


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _alive_in_group(pgid: int) -> list[str]:
    """The live processes (not zombies) of a process group, from /proc: "pid command"."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{stat.parent.name} {command[:120]}")
    return found


def _stops_cleanly(proc: subprocess.Popen, port: int, sig: int) -> None:
    """One signal to afina's process alone: it exits promptly with 0 and leaves nothing of the server behind,
    not a worker, not a job consumer, not a listener."""
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise AssertionError(f"afina server ignored {signal.Signals(sig).name} for 20 s") from None
    took = time.monotonic() - started
    deadline = time.monotonic() + 0.5  # what stops with it is gone at once, not whenever it notices
    while (left := _alive_in_group(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # clean up after a failure
    assert not left, f"still running after afina server exited: {left}"
    # promptly: MLflow's job runner, which afina does not start, held a stop for 10-30 s on this 2-core machine
    assert code == 0 and took < 8, f"exit code {code} after {took:.1f} s"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_server_auth_refuses_strangers_then_ctrl_c_stops_it(tmp_path, monkeypatch):
    from afina import UserError
    from afina.tracking import stores

    port, password = free_port(), "adm1n-Pw-for-afina"
    proc = _start_server(tmp_path, port, "--auth", MLFLOW_AUTH_ADMIN_PASSWORD=password)
    try:
        uri = f"http://127.0.0.1:{port}"
        search = f"{uri}/api/2.0/mlflow/experiments/search"
        assert requests.post(search, json={"max_results": 1}, timeout=10).status_code == 401
        assert requests.post(search, json={"max_results": 1}, auth=("admin", "wrong-password-1"), timeout=10).status_code == 401
        ok = requests.post(search, json={"max_results": 1}, auth=("admin", password), timeout=10)
        assert ok.status_code == 200 and "experiments" in ok.json()
        # afina's own probe and MLflow clients: refused without credentials, let in with the worker's variables
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with pytest.raises(UserError, match=r"refused the credentials \(HTTP 401\)"):
            stores.probe_http(uri)
        with pytest.raises(Exception, match="401|not authenticated|Unauthorized"):
            _client(uri).create_experiment("stranger")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        stores.probe_http(uri)
        made = _client(uri).create_experiment("worker")
        assert _client(uri).get_experiment(made).name == "worker"
        assert (tmp_path / "basic_auth.db").is_file()
        _stops_cleanly(proc, port, signal.SIGINT)
    finally:
        if proc.poll() is None:
            _kill(proc)


class Outage:
    """An HTTP hop in front of the MLflow server that goes down, connections closed unanswered, from the moment
    trial 1's run is created until `up()`: the server is down when that trial starts."""

    def __init__(self, target: str):
        self.down, self.tripped = threading.Event(), False
        hop = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/runs/create") and b'"trial-1"' in body and not hop.tripped:
                    hop.tripped = True  # once: the same request sent again later is the kept record
                    hop.down.set()
                if hop.down.is_set():
                    self.close_connection = True
                    return
                skip = {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                r = requests.request(self.command, target + self.path, data=body, headers=headers, timeout=120)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def up(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_offline_trial_is_sent_after_the_next_trial_promote_asks_to_sync_and_sigterm_stops_the_server(project, cli, monkeypatch):
    port = free_port()
    server = _start_server(project, port)
    direct = _client(f"http://127.0.0.1:{port}")  # the server itself, not through the hop
    hop = Outage(f"http://127.0.0.1:{port}")
    try:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an outage shows at once, not after minutes of retries
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        spec = tiny_spec(search={"n_trials": 2}, samples=NO_PROMPTS, tracking={"mlflow_uri": hop.uri})
        path = write_spec(project, spec)
        fallback = project / "mlruns" / "fallback"

        code, out, err = cli("sweep", path, "--no-progress")
        assert code == 0, err
        assert hop.down.is_set()
        t0, t1 = _study(project).get_trials()
        assert t0.state.name == t1.state.name == "COMPLETE"  # training never waited for the server
        offline = t1.user_attrs["mlflow_run_id"]
        assert offline.startswith("offline-") and not t0.user_attrs["mlflow_run_id"].startswith("offline-")
        said = "".join((out + err).split())  # rich wraps long lines, even inside a long path
        assert "isunreachable" in said and "".join(f"records are kept in mlruns/fallback; run `afina sync {path}`".split()) in said, said
        assert list(fallback.glob("*.jsonl"))
        assert [r.data.tags["afina.trial"] for r in _runs(direct, "trial")] == ["0"]

        hop.up()  # the server answers again, but the records are still kept locally
        code, out, err = cli("promote", path, "--trial", "1")
        assert code == 2 and "run `afina sync` first" in err, out + err
        assert not direct.search_registered_models()

        # no `afina sync`: the next sweep's first trial sends them
        code, out, err = cli("sweep", path, "--no-progress", "--n-trials", "3")
        assert code == 0, err
        assert not list(fallback.glob("*.jsonl")) and "records are kept" not in " ".join((out + err).split()), out + err
        study = _study(project)
        real = study.user_attrs["mlflow_run_ids"][offline]
        sent = direct.get_run(real)
        assert sent.info.status == "FINISHED" and sent.data.tags["afina.trial"] == "1" and sent.data.tags["afina.state"] == "COMPLETE"
        assert sent.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]
        assert sent.data.params["train.learning_rate"] and "best_eval_loss" in sent.data.metrics
        assert {m.step for m in direct.get_metric_history(real, "loss")} == {1, 2, 3, 4}
        assert "checkpoint" in {a.path for a in direct.list_artifacts(real)}
        assert sorted(r.data.tags["afina.trial"] for r in _runs(direct, "trial")) == ["0", "1", "2"]

        code, out, err = cli("status", path, "--json")  # the study now names the real run
        assert code == 0, err
        assert [t["run_id"] for t in json.loads(out)["trials"] if t["number"] == 1] == [real]

        _stops_cleanly(server, port, signal.SIGTERM)
    finally:
        hop.close()
        if server.poll() is None:
            _kill(server)
