"""Issue 16: the one-line promise on every command. Command-line mistakes, unreachable or impossible
stores, data files that hang or confuse the readers, secrets, and Ctrl-C during set-up."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers.files import nothing_written
from helpers.judges import judge_then_down
from helpers.services import drop_database, env, free_port, needs_pg, new_database, stop, wait_for
from helpers.specs import TIENDA, tiny_spec, write_spec

DEAD_PG = "postgresql://afina:pw-s3cr3t@127.0.0.1:1/nothing"
DEAD_HTTP = "http://afina:pw-s3cr3t@127.0.0.1:1"


def one_error_line(code: int, out: str, err: str, expect: int = 2) -> str:
    assert code == expect, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    return err


# --- command-line mistakes, for every command of the app -----------------------------------------


def commands() -> list[tuple[str, dict[str, tuple[type, bool]]]]:
    """Every registered command with its parameters (name -> (type, required)), read from the Typer app,
    so a new command is covered without editing this test."""
    import inspect
    import typing

    from afina.cli.app import app

    out = []
    for info in app.registered_commands:
        fn = info.callback
        hints = typing.get_type_hints(fn)
        params = {n: (hints[n], p.default is inspect.Parameter.empty) for n, p in inspect.signature(fn).parameters.items()}
        out.append((info.name or fn.__name__.replace("_", "-"), params))
    return sorted(out, key=lambda c: c[0])


def _int_options():
    """(command, --option) for every integer option of every command."""
    return [
        (name, "--" + p.replace("_", "-"))
        for name, params in commands()
        for p, (kind, required) in params.items()
        if not required and int in (typing_args(kind) or (kind,))
    ]


def typing_args(kind):
    import typing

    return typing.get_args(kind)


def test_the_app_has_commands():
    assert len(commands()) >= 12 and _int_options()


@pytest.mark.parametrize("name", [n for n, _ in commands()])
def test_every_command_unknown_option(project, cli, name):
    with nothing_written(project):
        err = one_error_line(*cli(name, "--no-such-option"))
    assert "No such option: --no-such-option" in err and f"`afina {name} --help`" in err, err


@pytest.mark.parametrize("name", [n for n, params in commands() if any(r for _, r in params.values())])
def test_every_command_missing_argument(project, cli, name):
    with nothing_written(project):
        err = one_error_line(*cli(name))
    assert "Missing" in err and f"`afina {name} --help`" in err, err


@pytest.mark.parametrize(("name", "option"), _int_options())
def test_every_integer_option_refuses_text(project, cli, name, option):
    with nothing_written(project):
        err = one_error_line(*cli(name, option, "abc"))
    assert f"'{option}'" in err and "afina" in err, err


def test_unknown_command_suggests(project, cli):
    err = one_error_line(*cli("swep"))
    assert "No such command 'swep'" in err and "'sweep'" in err and "afina --help" in err


def test_misspelt_option_suggests(project, cli):
    write_spec(project, tiny_spec())
    with nothing_written(project):
        err = one_error_line(*cli("sweep", "spec.yaml", "--n-trails", "3"))
    assert "--n-trails" in err and "--n-trials" in err


def test_no_arguments_prints_help_and_exits_2(project, cli):
    code, out, err = cli()
    assert code == 2 and "sweep" in out and "Commands" in out  # the help, on stdout
    assert err.startswith("error: no command given") and err.count("\n") == 1


def test_the_installed_typer_usage_error_is_caught():
    """typer >= 0.2x bundles click: main() must know its classes, whatever click is installed beside it."""
    import typer

    from afina.cli.options import _cli_errors

    usage, exits, _ = _cli_errors()
    try:
        from typer._click.exceptions import UsageError
    except ImportError:  # an older typer on plain click
        from click.exceptions import UsageError
    assert issubclass(UsageError, usage) and typer.Exit in exits


def test_subprocess_usage_error_has_no_traceback(project):
    r = subprocess.run([sys.executable, "-m", "afina", "sweep", "x.yaml", "--n-trials", "abc"], capture_output=True, text=True, env=env())
    one_error_line(r.returncode, r.stdout, r.stderr)


# --- stores ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status", "spec.yaml", "--storage", DEAD_PG],
        ["promote", "spec.yaml", "--storage", DEAD_PG],
        ["compare", "spec.yaml", "--storage", DEAD_PG],
        ["generate", "models:/tiny@champion", "hola", "--tracking-uri", DEAD_PG],
        ["export", "models:/tiny@champion", "--out", "out", "--tracking-uri", DEAD_HTTP],
        ["rollback", "tiny", "--tracking-uri", DEAD_PG],
        ["generate", "models:/tiny@champion", "hola", "--tracking-uri", "sqlite://"],
        ["status", "spec.yaml", "--storage", "sqlite://"],
        ["ui", "--tracking-uri", DEAD_PG],
        ["ui", "--tracking-uri", "sqlite://"],
        ["ui", "--tracking-uri", "postgresql://afina:pw@s3cr3t@127.0.0.1:1/nothing"],
        ["server", "--backend-store-uri", DEAD_PG],
    ],
    ids=lambda a: " ".join(a[:1] + a[-1:]),
)
def test_unreachable_or_impossible_store_is_one_line(project, cli, args):
    write_spec(project, tiny_spec())
    with nothing_written(project):
        code, out, err = cli(*args)
    one_error_line(code, out, err)
    assert "s3cr3t" not in out + err


def test_ui_refuses_an_occupied_or_impossible_port(project, cli):
    import socket

    from afina import tracking

    (project / "mlruns").mkdir()
    tracking.client("sqlite:///mlruns/mlflow.db").search_experiments()  # a real, empty store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = one_error_line(*cli("ui", "--port", port))
    assert f"port {port} on 127.0.0.1 is in use" in err
    assert "choose a port between 1 and 65535" in one_error_line(*cli("ui", "--port", "70000"))
    assert "cannot resolve it" in one_error_line(*cli("ui", "--host", "no-such-host.invalid"))


@needs_pg
def test_ui_keeps_the_password_off_the_command_line_and_stops_its_server(project, tmp_path):
    """`ps` shows no password, and SIGTERM to afina stops the MLflow server it started (no orphan)."""
    name, url = new_database()
    uri = url.replace("postgres@", "postgres:pw-s3cr3t@")  # trust auth accepts any password
    port = free_port()
    log = tmp_path / "ui.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "afina", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env(),
        start_new_session=True,
    )
    try:
        import requests

        def up():
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(up, 120, f"afina ui to answer ({log})", every=0.5)
        ps = subprocess.run(["ps", "-eo", "pid,ppid,pgid,args"], capture_output=True, text=True).stdout
        assert "s3cr3t" not in ps
        child = next(int(line.split()[0]) for line in ps.splitlines()[1:] if line.split()[1] == str(proc.pid))
        group = os.getpgid(child)
        assert group != os.getpgid(proc.pid)  # its own group: afina passes signals to all of it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

        def gone():
            try:
                os.killpg(group, 0)
                return False
            except ProcessLookupError:
                return True

        wait_for(gone, 30, "the MLflow server to stop with afina")
        assert not up()
        assert "s3cr3t" not in log.read_text()
    finally:
        stop(proc)
        drop_database(name)


# --- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://user:pa/ss@db:5432/x", "pa/ss"),
        ("postgresql://user:p@ss@db:5432/x", "p@ss"),
        ("mysql+pymysql://bob:s3cr3t@db/x?charset=utf8", "s3cr3t"),
        ("http://:tok3n@host:5000", "tok3n"),
        ("https://host/v1?api_key=k3y&model=x", "k3y"),
        ("https://host/v1?x=1&password=hunter2", "hunter2"),
        ("https://host/v1?token=abc123#frag", "abc123"),
        ("error: tracking.mlflow_uri 'postgresql://a:hunter2@h/d' is unusable (boom)", "hunter2"),
        ("judge endpoint http://u:pw-9@127.0.0.1:1/v1/chat/completions is unreachable", "pw-9"),
        ("dsn host=db password=hunter2 port=5", "hunter2"),
    ],
)
def test_redact(text, secret):
    from afina.tracking import redact

    out = redact(text)
    assert secret not in out and "***" in out, out


def test_redact_keeps_harmless_text():
    from afina.tracking import redact

    for text in (
        "sqlite:///mlruns/mlflow.db",
        "http://127.0.0.1:5000",
        "models:/tiny@champion",
        "lr=0.001 and r=8",
        "postgresql://postgres@db/x",
    ):
        assert redact(text) == text


def test_logged_spec_masks_every_secret():
    from afina import tracking
    from afina.spec import schema as spec_mod

    spec = spec_mod.Spec.model_validate(
        tiny_spec(
            evaluate={"judge": {"url": "http://u:pw-s3cr3t@127.0.0.1:1/v1?api_key=k3y", "name": "j"}},
            tracking={"optuna_storage": "postgresql://o:pg-s3cr3t@db/x"},
        )
    )
    text = tracking.dump_spec(spec, {"train.learning_rate": 1e-3})
    assert "s3cr3t" not in text and "k3y" not in text
    assert "http://u:***@127.0.0.1:1/v1?api_key=***" in text


def test_judge_credentials_appear_nowhere_and_all_failed_exits_1(project, cli):
    """A judge that goes down after the start-up probe fails every trial: the sweep exits 1 with the reason,
    and the URL's credentials are in no file of the project (stores, artifacts, report, leaderboard) nor the output."""
    with judge_then_down() as port:
        url = f"http://judge:pw-s3cr3t@127.0.0.1:{port}/v1?api_key=k3y-s3cr3t"
        spec = tiny_spec(evaluate={"metrics": ["length"], "judge": {"url": url, "timeout": 2}})
        spec["search"].update(n_trials=2, objective="judge")
        write_spec(project, spec)
        code, out, err = cli("sweep", "spec.yaml", "--no-progress")
    assert code == 1, (out, err)
    last = err.strip().splitlines()[-1]  # above it: MLflow's own store set-up chatter
    assert last.startswith("error: all 2 trials failed for the same reason") and "judge endpoint" in last, err
    assert "Traceback" not in out + err
    assert "s3cr3t" not in out + err
    written = [p for p in project.rglob("*") if p.is_file() and p != project / "spec.yaml"]  # the user's own spec holds it
    assert len(written) > 5 and any(p.name == "spec.yaml" for p in written)  # the logged spec is among them
    leaks = [p for p in written if b"s3cr3t" in _bytes(p)]
    assert not leaks, leaks
    assert (project / "mlruns" / "mlflow.db").is_file()  # the check looked inside the real stores


def _bytes(path: Path) -> bytes:
    """A file's bytes, or none for a SQLite journal that was gone by the time it was read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


# --- data files -----------------------------------------------------------------------------------


def test_file_named_like_a_glob_is_used_literally(tmp_path):
    from afina import data

    real = tmp_path / "faq[2024].jsonl"
    real.write_bytes((TIENDA / "faq.jsonl").read_bytes())
    (tmp_path / "faq2.jsonl").write_text('{"prompt": "a", "completion": "b"}\n', encoding="utf-8")
    assert data.files("faq[2024].jsonl", tmp_path) == [real]
    assert len(data.read(real)) == len(data.read(TIENDA / "faq.jsonl"))
    assert data.files("faq[0-9].jsonl", tmp_path) == [tmp_path / "faq2.jsonl"]  # still a glob when no such file


def test_check_json_into_a_new_folder(project, cli):
    write_spec(project, tiny_spec())
    code, out, err = cli("check", "spec.yaml", "--json", "reports/new/check.json")
    assert code == 0, err
    assert (project / "reports" / "new" / "check.json").is_file()
    (project / "afile").write_text("x")
    with nothing_written(project):
        err = one_error_line(*cli("check", "spec.yaml", "--json", "afile/check.json"))
    assert "is a file, not a folder" in err


def test_init_when_experiments_is_a_file(project, cli):
    (project / "experiments").write_text("not a folder")
    with nothing_written(project):
        err = one_error_line(*cli("init", str(TIENDA / "faq.jsonl")))
    assert "experiments is a file" in err


# --- Ctrl-C during set-up -------------------------------------------------------------------------


def test_interrupt_swallowed_by_a_finaliser_still_stops(monkeypatch):
    """Python drops a KeyboardInterrupt raised inside __del__ ("Exception ignored in ..."): the flag survives."""
    from afina.training import stop

    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands while a finaliser runs
            time.sleep(0.1)

    restore = stop.install_setup_stop()
    try:
        Finaliser()
        gc.collect()  # the KeyboardInterrupt is printed as ignored and the code goes on...
        with pytest.raises(KeyboardInterrupt):
            stop.check_stop()  # ...until the next set-up step
    finally:
        restore()
        stop.STOP.clear()


def test_a_second_ctrl_c_waits_while_a_run_is_closed_and_a_third_does_not():
    """The graceful stop's own KeyboardInterrupt and the user's second Ctrl-C often land together:
    inside stop.shield() (closing the trial's MLflow run) that second one is held, a third is not."""
    from afina.training import stop

    restore = stop.install_stop()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # first: graceful
        assert stop.STOP.is_set()
        closed = []
        with stop.shield():
            os.kill(os.getpid(), signal.SIGINT)  # second, during the clean-up: held
            closed.append("run")
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)  # third: the user means it
        assert closed == ["run"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # outside a clean-up, the second Ctrl-C stops at once
    finally:
        restore()
        stop.STOP.clear()


def test_a_continued_trial_closes_the_run_its_interrupted_predecessor_left_running(project):
    """If a hard stop still cut a trial's clean-up short, the trial that continues it closes its run."""
    import optuna
    from mlflow import MlflowClient

    from afina.spec import schema
    from afina.training import resume

    s = schema.load(write_spec(project, tiny_spec()))
    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    left = c.create_run(c.create_experiment("tiny")).info.run_id
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db")
    t0 = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)})
    t0.set_user_attr("mlflow_run_id", left)
    t0.set_user_attr("interrupted", True)
    study.tell(t0, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(t0.params, user_attrs={"resumes_trial": t0.number})
    t1 = study.ask()
    assert resume.resume_point(s, t1, c, "tiny") == (None, [])  # no checkpoint was left
    run = c.get_run(left)
    assert run.info.status == "FAILED" and run.data.tags["afina.reason"] == "interrupted; trial 1 continues it"


def _setup_state(pid: int) -> tuple[bool, bool]:
    """(torch is mapped, SIGINT has a handler) for a running process, from /proc."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
        caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigCgt"))
    except (OSError, StopIteration):
        return False, False
    return "libtorch" in maps, bool(int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_during_setup_stops_the_sweep(project, tmp_path):
    write_spec(project, tiny_spec())
    proc = subprocess.Popen(
        [sys.executable, "-m", "afina", "sweep", "spec.yaml", "--no-progress"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env(),
        text=True,
    )
    # Once torch is mapped and SIGINT has a handler, afina's main() runs its set-up (imports before main()
    # are Python's own Ctrl-C); a fixed sleep raced a cold interpreter on a fresh clone.
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        state = _setup_state(proc.pid)
        if not seen or seen[-1][1:] != state:
            seen.append((round(time.monotonic() - deadline + 90, 2), *state))
        if all(state):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    seen.append((round(time.monotonic() - deadline + 90, 2), *_setup_state(proc.pid), "SIGINT"))
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, f"{out}\n(seconds, torch mapped, SIGINT caught): {seen}"
    assert "Traceback" not in out
    db = project / "mlruns" / "optuna.db"
    if db.is_file():
        import optuna

        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
        assert not [t for t in study.trials if t.state.name == "COMPLETE"]


def test_yaml_loader_refuses_bomb_quickly(tmp_path):
    """The memoised size check measures a billion-laughs document without expanding it."""
    from afina import UserError
    from afina.spec import schema as spec_mod

    levels = "".join(f"l{i + 1}: &l{i + 1} [{', '.join([f'*l{i}'] * 10)}]\n" for i in range(9))
    path = tmp_path / "bomb.yaml"
    path.write_text("l0: &l0 [lol]\n" + levels, encoding="utf-8")
    t0 = time.monotonic()
    with pytest.raises(UserError, match="alias bomb"):
        spec_mod.load(path)
    assert time.monotonic() - t0 < 5
    assert yaml.safe_load("a: &a {x: 1}\nb: *a\n")  # plain anchors stay fine for PyYAML and for afina:
    path.write_text(yaml.safe_dump(tiny_spec()).replace("name: tiny", "name: &n tiny\ndescription: *n"), encoding="utf-8")
    loaded = spec_mod.load(path)
    assert loaded.description == "tiny" and loaded.name == "tiny"
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({**tiny_spec(), "description": "tiny"}), encoding="utf-8")
    assert loaded.model_dump() == spec_mod.load(plain).model_dump()  # the alias gave the anchored value, nothing else moved
