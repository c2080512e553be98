"""Fault matrix: bad storage URLs, folders, data and models give one line and exit code 2 with nothing
written; a fault inside a trial (out of memory too) fails that trial only. Spec typos live in test_spec_errors.py.

Also: a graceful stop (SIGTERM, first Ctrl-C) checkpoints and resumes; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest

from afina import models
from afina.commands.sweep import finished
from helpers.services import PG, free_port, missing, sweep, trial_running, wait_for
from helpers.specs import TIENDA, tiny_spec, write_spec


@pytest.fixture(scope="module")
def not_mlflow():
    """An HTTP server that is not MLflow (answers 501 to POST)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def mount(folder: Path, options: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        missing("cannot mount a tmpfs here", "run the tests as root, as CI does")
    return folder


def umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def model_copy(project: Path, name: str) -> Path:
    out = project / name
    shutil.copytree(models.resolve("tiny-random"), out)
    return out


def pickle_only(project: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    out = model_copy(project, "pickled")
    torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
    (out / "model.safetensors").unlink()
    return out


def remote_code(project: Path) -> Path:
    out = model_copy(project, "remote")
    cfg = json.loads((out / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (out / "config.json").write_text(json.dumps(cfg))
    # working remote code (a llama under other names) that leaves a mark when Python imports it
    (out / "evil.py").write_text(
        f"open({str(project / 'pwned')!r}, 'a').write('remote code ran\\n')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class EvilConfig(LlamaConfig):\n    pass\n\n\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
    )
    return out


def write(project: Path, name: str, text: str | bytes) -> str:
    p = project / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def slices(path) -> dict:
    return {
        "data": {"slices": {"faq": {"path": path}}, "eval": {"path": str(TIENDA / "eval.jsonl"), "max_rows": 8}},
        "search": {"space": {"train.learning_rate": {"float": [1e-4, 1e-2], "log": True}}},
    }


def tracking(**kw) -> dict:
    return {"tracking": kw}


PG_DOWN = "postgresql://postgres@127.0.0.1:1/afina_x"
PG_NO_DB = f"{PG}/afina_no_such_db_9f3"
PG_BAD_USER = PG.replace("postgres@", "nobody_afina:hunter2-pw@") + "/postgres"

# (id, overrides(project, not_mlflow) -> dict, the error must match, needs PostgreSQL)
CASES = [
    ("optuna-pg-refused", lambda p, h: tracking(optuna_storage=PG_DOWN), r"optuna_storage .*unusable.*refused", False),
    ("optuna-pg-unknown-db", lambda p, h: tracking(optuna_storage=PG_NO_DB), r"optuna_storage .*does not exist", True),
    ("optuna-pg-unknown-user", lambda p, h: tracking(optuna_storage=PG_BAD_USER), r"optuna_storage .*nobody_afina:\*\*\*@", True),
    ("optuna-bad-scheme", lambda p, h: tracking(optuna_storage="mongodb://db:27017/x"), r"unsupported scheme 'mongodb'", False),
    ("optuna-unknown-driver", lambda p, h: tracking(optuna_storage="postgresql+nodriver://u@h/db"), r"unknown database dialect", False),
    ("optuna-missing-driver", lambda p, h: tracking(optuna_storage="mysql+pymysql://u@127.0.0.1:1/db"), r"driver is not installed", False),
    ("optuna-bad-port", lambda p, h: tracking(optuna_storage="postgresql://u@127.0.0.1:notaport/db"), r"optuna_storage .*unusable", False),
    ("optuna-unknown-host", lambda p, h: tracking(optuna_storage="postgresql://u@no-such-host.invalid:5432/db"), r"unusable", False),
    (
        "optuna-sqlite-is-dir",
        lambda p, h: (p / "adir").mkdir() or tracking(optuna_storage=f"sqlite:///{p / 'adir'}"),
        r"optuna_storage .*unusable",
        False,
    ),
    (
        "optuna-sqlite-not-db",
        lambda p, h: tracking(optuna_storage=f"sqlite:///{write(p, 'x.db', 'not a database' * 100)}"),
        r"not a database",
        False,
    ),
    (
        "optuna-sqlite-under-file",
        lambda p, h: tracking(optuna_storage=f"sqlite:///{write(p, 'f', 'x')}/sub/o.db"),
        r"is a file, not a folder",
        False,
    ),
    ("mlflow-http-refused", lambda p, h: tracking(mlflow_uri="http://127.0.0.1:1"), r"mlflow_uri .*unreachable", False),
    ("mlflow-http-not-mlflow", lambda p, h: tracking(mlflow_uri=h), r"does not answer like an MLflow server", False),
    ("mlflow-bad-scheme", lambda p, h: tracking(mlflow_uri="ftp://host/x"), r"unsupported scheme 'ftp'", False),
    ("mlflow-pg-refused", lambda p, h: tracking(mlflow_uri=PG_DOWN), r"mlflow_uri .*unusable", False),
    ("mlflow-pg-unknown-db", lambda p, h: tracking(mlflow_uri=PG_NO_DB), r"mlflow_uri .*does not exist", True),
    (
        "mlflow-sqlite-not-db",
        lambda p, h: tracking(mlflow_uri=f"sqlite:///{write(p, 'm.db', 'garbage' * 100)}"),
        r"mlflow_uri .*not a database",
        False,
    ),
    ("artifact-root-under-file", lambda p, h: tracking(artifact_root=f"{write(p, 'g', 'x')}/arts"), r"artifact_root.*is a file", False),
    ("checkpoint-dir-under-file", lambda p, h: tracking(checkpoint_dir=f"{write(p, 'h', 'x')}/ck"), r"checkpoint_dir.*is a file", False),
    ("data-missing", lambda p, h: slices(str(p / "nope.jsonl")), r"nope\.jsonl", False),
    ("data-empty", lambda p, h: slices(write(p, "empty.jsonl", "")), r"slice faq.*empty", False),
    ("data-bad-json", lambda p, h: slices(write(p, "bad.jsonl", '{"prompt": "a", "completion": \n')), r"bad\.jsonl", False),
    ("data-binary", lambda p, h: slices(write(p, "bin.jsonl", bytes(range(256)) * 8)), r"bin\.jsonl", False),
    ("data-csv-no-columns", lambda p, h: slices(write(p, "t.csv", "a,b\n1,2\n")), r"t\.csv", False),
    ("data-dir-without-files", lambda p, h: (p / "ddir").mkdir() or slices(str(p / "ddir")), r"ddir", False),
    (
        "eval-missing",
        lambda p, h: {
            **slices(str(TIENDA / "faq.jsonl")),
            "data": {"slices": {"faq": {"path": str(TIENDA / "faq.jsonl")}}, "eval": {"path": str(p / "ev.jsonl")}},
        },
        r"ev\.jsonl",
        False,
    ),
    ("samples-missing", lambda p, h: {"samples": {"path": str(p / "prompts.jsonl")}}, r"prompts\.jsonl", False),
    ("model-missing-dir", lambda p, h: {"model": {"ref": str(p / "no-model")}}, r"model\.ref", False),
    (
        "model-no-weights",
        lambda p, h: (p / "m1").mkdir() or write(p, "m1/config.json", "{}") and {"model": {"ref": str(p / "m1")}},
        r"m1",
        False,
    ),
    (
        "model-bad-config",
        lambda p, h: (model_copy(p, "m2") / "config.json").write_text("{oops") and {"model": {"ref": str(p / "m2")}},
        r"m2",
        False,
    ),
    ("model-hub-offline", lambda p, h: {"model": {"ref": "someorg/not-cached-model"}}, r"not in the local Hugging Face cache", False),
    ("model-pickle-only", lambda p, h: {"model": {"ref": str(pickle_only(p))}}, r"never unpickles", False),
]


@pytest.mark.parametrize(("fault", "make", "match"), [pytest.param(*c[:3], id=c[0], marks=[pytest.mark.pg] if c[3] else []) for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(fault, make, match, project, cli, not_mlflow):
    path = write_spec(project, tiny_spec(**make(project, not_mlflow)))
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 2, (out, err)
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(match, lines[0]), lines[0]
    assert "hunter2-pw" not in err + out
    assert not (project / "mlruns").exists(), "a bad input left files behind"


@pytest.fixture
def tmpfs(project):
    mounted: list[Path] = []

    def make(name: str, options: str) -> Path:
        mounted.append(mount(project / name, options))
        return mounted[-1]

    yield make
    for folder in mounted:
        umount(folder)


@pytest.mark.drill
@pytest.mark.parametrize("where", ["optuna", "mlflow", "artifacts", "checkpoints"])
def test_read_only_folder(where, project, cli, tmpfs):
    ro = tmpfs("ro", "ro,size=1m")
    track = {
        "optuna": {"optuna_storage": f"sqlite:///{ro}/o.db"},
        "mlflow": {"mlflow_uri": f"sqlite:///{ro}/m.db"},
        "artifacts": {"artifact_root": str(ro / "arts")},
        "checkpoints": {"checkpoint_dir": str(ro / "ck")},
    }[where]
    path = write_spec(project, tiny_spec(tracking=track))
    code, _, err = cli("sweep", path, "--no-progress")
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1, err
    assert not (project / "mlruns").exists()


@pytest.mark.drill
def test_disk_full(project, cli, tmpfs):
    full = tmpfs("full", "size=256k")
    (full / "ballast").write_bytes(b"\0" * (200 << 10))
    path = write_spec(project, tiny_spec(tracking={"checkpoint_dir": str(full / "ck")}))
    code, _, err = cli("sweep", path, "--no-progress")
    assert code == 2 and "no space left" in err, err
    assert not (project / "mlruns").exists()


def test_corrupt_weights_fail_their_trials_not_the_sweep(project, cli):
    """A fault inside a trial (weights that do not fit the model) fails that trial, closes its run, and the sweep
    goes on. A file that is not safetensors at all is refused before the sweep (tests/test_bad_input_upfront.py);
    these are real safetensors, whose every tensor has the wrong shape, which only loading the model finds."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    bad = model_copy(project, "corrupt")
    with safe_open(str(bad / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    save_file({name: torch.zeros(3) for name in names}, str(bad / "model.safetensors"), metadata={"format": "pt"})
    path = write_spec(project, tiny_spec(model={"ref": str(bad)}, search={"n_trials": 2}))
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 1 and "error: all 2 trials failed" in err, err  # both ran; a sweep that achieved nothing says so
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state.name == "FAIL" for t in trials)
    assert finished(study) == 2
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    for t in trials:
        run = c.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED" and run.data.tags["afina.reason"] == t.user_attrs["fail_reason"][:4000]


def test_remote_code_never_runs_unless_the_spec_says(project, cli):
    folder = remote_code(project)
    spec = tiny_spec(model={"ref": str(folder)}, search={"n_trials": 1}, samples={"prompts": []})
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE"]  # trained on the folder's weights, as a plain llama
    assert not (project / "pwned").exists()
    # the positive control: the same folder with trust_remote_code does run its code, so the check above can fail
    spec.update(name="trusted", model={"ref": str(folder), "trust_remote_code": True})
    code, _, err = cli("sweep", write_spec(project, spec, "trusted.yaml"), "--no-progress")
    assert code == 0, err
    assert (project / "pwned").read_text() == "remote code ran\n"
    trials = optuna.load_study(study_name="trusted", storage=f"sqlite:///{project}/mlruns/optuna.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE"]


@pytest.mark.drill
def test_graceful_stop_resumes_and_second_ctrl_c_stops_at_once(project, cli):
    """SIGTERM checkpoints and stops; the next sweep resumes that trial from the checkpoint; two Ctrl-C stop at once."""
    path = write_spec(
        project, tiny_spec(search={"n_trials": 2, "heartbeat": 2}, train={"max_steps": 45, "eval_steps": 15}, samples={"prompts": []})
    )
    ckpts = project / "mlruns" / "checkpoints" / "tiny"
    study = lambda: optuna.load_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db")  # noqa: E731

    log = project / "run1.log"
    first = sweep(path, project, log)
    wait_for(trial_running(project, 0, evaluated=True), 240, "trial 0 to report an eval")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 130, log.read_text()[-3000:]
    t0 = study().get_trials()[0]
    assert t0.state.name == "FAIL" and t0.user_attrs["interrupted"]
    stopped_at = max(int(p.name.split("-")[1]) for p in (ckpts / "trial-0").glob("checkpoint-*"))
    assert f"stopped at step {stopped_at} after saving a checkpoint" in t0.user_attrs["fail_reason"]  # saved when it stopped

    log2 = project / "run2.log"
    second = sweep(path, project, log2)
    wait_for(trial_running(project, 1), 240, "the requeued trial to start")
    second.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals in one instant reach Python as one
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=60) == 130, log2.read_text()[-3000:]
    t1 = study().get_trials()[1]
    assert t1.user_attrs["resumes_trial"] == 0 and t1.user_attrs["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    assert t1.state.name == "FAIL" and t1.user_attrs.get("interrupted")

    code, out, err = cli("sweep", path, "--no-progress", "--n-trials", "2")
    assert code == 0, err
    s = study()
    assert finished(s) == 2 and sum(t.state.name == "COMPLETE" for t in s.get_trials()) == 2
    assert not [t for t in s.get_trials() if t.state.name in ("RUNNING", "WAITING")]
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("tiny")
    assert not c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def test_secret_params_and_reasons_are_masked(tmp_path):
    from afina import tracking

    c = tracking.client(f"sqlite:///{tmp_path}/m.db")
    run = c.create_run(c.create_experiment("x", artifact_location=tmp_path.as_uri())).info.run_id
    tracking.log_params(c, run, {"train.hub_token": "hf_abc", "store": "postgresql://u:pw123@h/db", "train.learning_rate": 0.1})
    tracking.finish(c, run, "FAIL", "OperationalError: could not reach postgresql://u:pw123@h/db")
    r = c.get_run(run)
    assert r.data.params["train.hub_token"] == "***" and r.data.params["train.learning_rate"] == "0.1"
    assert "pw123" not in str(r.data.params) + str(r.data.tags) and "u:***@h" in r.data.params["store"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--backend-store-uri", "mongodb://h/x"], "use postgresql://"),
        (
            ["--backend-store-uri", "postgresql://postgres:hunter2-pw@127.0.0.1:1/x"],
            r"--backend-store-uri 'postgresql://postgres:\*\*\*@127.0.0.1:1/x' is unusable",
        ),
        (["--backend-store-uri", "sqlite:///s.db", "--auth"], "MLFLOW_AUTH_ADMIN_PASSWORD"),
        (["--backend-store-uri", "sqlite:///s.db", "--port", "70000"], "--port 70000"),
    ],
    ids=["scheme", "unreachable", "auth-without-admin", "port"],
)
def test_server_bad_input(args, match, project, cli, monkeypatch):
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_CONFIG_PATH", raising=False)
    code, out, err = cli("server", *args, "--artifacts-destination", str(project / "arts"))
    assert code == 2 and re.search(match, err) and len(err.strip().splitlines()) == 1, err
    assert "hunter2-pw" not in out + err and not (project / "arts").exists()


@pytest.mark.drill
def test_disk_full_mid_trial_fails_that_trial_only(project, cli, tmpfs):
    """Room to start (over 1 MiB) but not for the first checkpoint: the trial fails with ENOSPC, the sweep goes on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(models.resolve("tiny-random"))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    big = project / "big"
    AutoModelForCausalLM.from_config(config).save_pretrained(big)  # about 8 MB: its full checkpoint cannot fit in 2 MB
    tok.save_pretrained(big)
    full = tmpfs("full", "size=2m")
    path = write_spec(
        project,
        tiny_spec(
            model={"ref": str(big), "method": "full"},
            search={"n_trials": 2},
            tracking={"checkpoint_dir": str(full / "ck")},
            samples={"prompts": []},
        ),
    )
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 1 and "error: all 2 trials failed" in err, err  # both ran; a sweep that achieved nothing says so
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state.name == "FAIL" for t in trials)
    assert all("No space left on device" in t.user_attrs["fail_reason"] for t in trials), [t.user_attrs for t in trials]
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    for t in trials:
        run = c.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED" and "No space left" in run.data.tags["afina.reason"]
    assert not list((full / "ck").rglob("*.safetensors"))  # the failed trials' scratch is cleaned up


@pytest.mark.drill
def test_out_of_memory_fails_that_trial_only_and_the_worker_takes_the_next(project):
    """A sweep whose memory is capped at 4 GiB (RLIMIT_DATA; its normal trials here peak near 2.3 GiB) meets an
    oversized configuration first: a batch of 256 rows of 2k tokens, gigabytes of activations. That trial fails
    with an out-of-memory reason and its run is closed FAILED; the same worker process frees what it held and
    completes the two normal configurations after it."""
    import os
    import resource
    import sys

    from mlflow import MlflowClient

    from helpers.specs import jsonl

    answer = "La camiseta básica de algodón orgánico se lava a treinta grados y no encoge. " * 34  # < max_length
    rows = [
        {"messages": [{"role": "user", "content": f"Háblame de la prenda {i}"}, {"role": "assistant", "content": answer}]}
        for i in range(256)
    ]
    spec = tiny_spec(
        data={
            "slices": {"long": {"path": str(jsonl(project / "long.jsonl", rows))}},
            "eval": {"path": str(TIENDA / "eval.jsonl"), "max_rows": 8},
        },
        train={"max_length": 2048},
        search={"n_trials": 3, "seed": 1, "sampler": "grid"},  # seed 1: the grid's oversized point goes first
        samples={"prompts": []},
    )
    spec["search"]["space"] = {"train.per_device_train_batch_size": {"categorical": [256, 2, 4]}}
    write_spec(project, spec)
    cap = 4 << 30
    done = subprocess.run(
        [sys.executable, "-m", "afina", "sweep", "spec.yaml", "--no-progress"],
        cwd=project,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (cap, cap)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db").get_trials()
    assert [t.params["train.per_device_train_batch_size"] for t in trials] == [256, 4, 2]
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"], [t.user_attrs.get("fail_reason") for t in trials]
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("out of memory (") and "lower per_device_train_batch_size or max_length" in reason, reason
    assert len({t.user_attrs["worker"] for t in trials}) == 1  # one process took all three
    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    failed = c.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED" and failed.data.tags["afina.reason"] == reason


@pytest.fixture(scope="module")
def password_pg():
    """A private PostgreSQL cluster that checks passwords (the shared one trusts everyone); needs root to start."""
    import os
    import tempfile

    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if os.geteuid() != 0 or not bins or not shutil.which("runuser"):
        pytest.skip("needs root and PostgreSQL's server binaries to start a cluster with password auth")
    bin_dir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="afina-pgauth-"))
    root.chmod(0o755)
    (root / "pw").write_text("right-pw-4f2a\n")
    shutil.chown(root, "postgres")
    shutil.chown(root / "pw", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_pg, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={root / 'pw'}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_pg,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(root / "data"),
            "-w",
            "-l",
            str(root / "log"),
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    yield f"postgresql://postgres:{{}}@127.0.0.1:{port}/postgres"
    subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.pg
@pytest.mark.parametrize("where", ["optuna_storage", "mlflow_uri"])
def test_wrong_password_is_one_line_and_writes_nothing(where, password_pg, project, cli):
    from afina.tracking import stores

    stores.probe_sql(password_pg.format("right-pw-4f2a"), where)  # the right password gets in
    path = write_spec(project, tiny_spec(tracking={where: password_pg.format("wrong-pw-77c1")}))
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "password authentication failed" in lines[0], err
    assert "wrong-pw-77c1" not in err + out and "right-pw" not in err + out
    assert not (project / "mlruns").exists()
