"""Answer-only vs all-token loss at equal steps, on a shipped spec: what the answers gain.

For each mode, one afina trial of the spec's fixed settings (the slices' own include/weight,
the given learning rate) is trained for the same number of steps; then the best checkpoint
answers the held-out eval prompts (greedy), scored with ROUGE-L and chrF against the eval
answers, and the answer NLL (promote's gate metric) is measured on the same rows.
One seed per mode: the figures carry no seed noise estimate.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
MODES = {"answer_only": None, "all_tokens": False}  # train.completion_only_loss


def held_out(prepared) -> list[dict]:
    """The eval rows as {prompt, reference}: the last user turn and its answer."""
    from afina.data import token_cache

    out = []
    for r in prepared.eval:
        split = token_cache.answer(r.messages)
        users = [m["content"] for m in r.messages if m["role"] == "user"]
        if split and users:
            out.append({"prompt": users[-1], "reference": split[1][0]["content"]})
    return out


def compare(spec_path: Path, model: str, steps: int, lr: float) -> dict:
    import optuna

    from afina import tracking
    from afina.commands import compare as compare_mod
    from afina.commands import sweep
    from afina.evaluation import answer_loss
    from afina.search import study as study_mod
    from afina.spec import schema as spec_mod
    from afina.tracking import logs
    from afina.training import trial
    from afina.training.context import TrialContext

    folder = Path(tempfile.mkdtemp(prefix="afina-answers-"))
    out: dict = {"spec": spec_path.name, "model": model, "steps": steps, "learning_rate": lr}
    for mode, flag in MODES.items():
        spec = spec_mod.load(spec_path)
        spec.model.ref = model
        spec.train = spec.train | {"max_steps": steps, "eval_steps": max(1, steps // 2), "completion_only_loss": flag}
        spec.search.space = {"train.learning_rate": spec.search.space["train.learning_rate"]}
        spec.search.pruner, spec.search.pruner_args, spec.search.heartbeat = "none", {}, None
        spec.evaluate.metrics = []  # the spec's own samples may have no references; the held-out prompts below do
        spec.tracking = spec.tracking.model_copy(
            update={
                "mlflow_uri": f"sqlite:///{folder}/mlflow.db",
                "optuna_storage": f"sqlite:///{folder}/optuna.db",
                "artifact_root": str(folder / "artifacts"),
                "checkpoint_dir": str(folder / "checkpoints"),
            }
        )
        spec.name = f"answers-{mode}"
        prepared, model_dir, _ = sweep.validate(spec)
        logs.quiet(sweep=True)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        prompts = held_out(prepared)
        spec.evaluate.metrics = ["rougeL", "chrf", "length"]
        study = study_mod.open(spec, create=True)
        c = tracking.client(spec.tracking.mlflow_uri)
        exp = tracking.experiment(c, spec.name, spec.tracking.artifact_root, spec.tracking.mlflow_uri)
        parent = tracking.parent_run(c, exp, study, spec, str(spec_path))
        ctx = TrialContext(spec, prepared, model_dir, study.study_name, spec.search.directions, c, exp, parent, prompts)
        study.enqueue_trial({"train.learning_rate": lr})
        t = study.ask()
        t0 = time.perf_counter()
        value = trial.run(ctx, t)
        study.tell(t, value)
        results = study.trials[t.number].user_attrs["results"]
        m, tok = compare_mod._load(spec, c, "trial", t.user_attrs["mlflow_run_id"])
        out[mode] = {
            "answer_nll": answer_loss.answer_nll(m, tok, prepared.eval),
            "rougeL": results["rougeL"],
            "chrf": results["chrf"],
            "length": results["length"],
            "eval_loss": results["eval_loss"],
            "wall_s": time.perf_counter() - t0,
        }
        out["n_prompts"], out["n_eval_rows"], out["rows_train"] = len(prompts), len(prepared.eval), sum(map(len, prepared.slices.values()))
    return out


def from_sweeps(spec_path: Path, folders: list[Path]) -> dict:
    """Figures of finished sweeps of one spec, run in `folders` (e.g. before and after a change, same
    seed, so the same trial numbers have the same params): per trial its objective, generation metrics
    and the answer NLL of its kept checkpoint on the eval set."""
    import optuna

    from afina import data, tracking
    from afina.commands import compare as compare_mod
    from afina.evaluation import answer_loss
    from afina.spec import schema as spec_mod

    spec = spec_mod.load(spec_path)
    rows = data.prepare(spec).eval
    out: dict = {"n_eval_rows": len(rows)}
    for folder in folders:
        study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{folder}/mlruns/optuna.db")
        c = tracking.client(f"sqlite:///{folder}/mlruns/mlflow.db")
        trials = {}
        for t in study.get_trials():
            if t.state.name != "COMPLETE":
                trials[t.number] = {"state": t.state.name, "params": t.params}
                continue
            model, tok = compare_mod._load(spec, c, f"trial {t.number}", t.user_attrs["mlflow_run_id"])
            res = t.user_attrs.get("results", {})
            trials[t.number] = {
                "params": t.params,
                "objective_eval_loss": t.value,
                "answer_nll": answer_loss.answer_nll(model, tok, rows),
                **{k: res.get(k) for k in ("rougeL", "chrf", "length")},
            }
        out[str(folder)] = {"baseline": study.user_attrs.get("baseline"), "trials": trials}
    return out
