"""`afina init DATA_FILE`: a first experiment for people who only have their examples.

Reads the file, detects its format and columns, cuts one slice per value of a low-cardinality
column (category, label, ...), holds out a seeded eval split, proposes a small search space for
the embedded model and sample prompts from the eval rows, writes experiments/NAME.yaml with
comments, then runs `afina check` on it.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path

import yaml

from afina import UserError, data, models
from afina.data import chat_rows, health, health_report, sources, token_lengths
from afina.spec import schema as spec_mod
from afina.tracking import logs

PREFERRED = ("category", "label", "type", "topic", "source", "intent", "class", "domain", "task")
MAX_SLICES = 12
REFIT_EPOCHS = 2  # passes over the training rows the refit aims for: the promoted model sees every row twice


def run(data_file: Path, name: str | None, force: bool, console, model: str = "smollm2-135m", folder: Path = Path("experiments")):
    logs.quiet()  # the first run builds the embedded model: its loading and shard-writing bars only with --verbose
    path = Path(data_file)
    if not path.exists():
        raise UserError(f"{data_file}: no such file; pass your examples (.jsonl, .json, .csv, .parquet or a save_to_disk folder)")
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:64].strip("_.-") or "experiment"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"--name {name!r}: use letters, digits, '_', '.' or '-', starting with a letter or digit")
    if len(name) > 64:
        raise UserError(f"--name {name[:70]!r}...: at most 64 characters")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; move it away or run afina init from another folder")
    target = folder / f"{name}.yaml"
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it or --name to choose another name")
    records = sources.read(path)
    if not records:
        raise UserError(f"{data_file}: no rows; afina needs examples to learn from")
    fmt, col = chat_rows.detect(set(records[0]), where=str(data_file))
    content = {c for c in col.values() if c}
    column = slice_column(records, content)
    source = os.path.relpath(path.resolve(), folder.resolve())
    columns = {k: col[k] for k in ("prompt", "completion") if fmt == "prompt_completion" and col[k] != k}
    if column:
        values = sorted(Counter(r[column] for r in records))
        slices = {_slug(v): {"path": source, "where": {column: v}, **({"columns": columns} if columns else {})} for v in values}
    else:
        slices = {_slug(path.stem) or "examples": {"path": source, **({"columns": columns} if columns else {})}}
    n_eval = min(48, max(1, round(len(records) * 0.1)))
    spec = {
        "name": name,
        "model": {"ref": model, "method": "lora"},
        # every slice's weight is searched: name them, so measuring the whole file is a stated choice
        "data": {
            "seed": 0,
            "slices": slices,
            "eval": {"split": 0.1, "max_rows": n_eval, **({"slices": list(slices)} if len(slices) > 1 else {})},
        },
        "train": {
            "max_steps": 30,
            "per_device_train_batch_size": 8,
            "max_length": 256,
            "eval_steps": 10,
            "per_device_eval_batch_size": 16,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "seed": 0,
        },
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "search": {
            "n_trials": 8,
            "sampler": "tpe",
            "sampler_args": {"n_startup_trials": 4},
            "pruner": "median",
            "pruner_args": {"n_startup_trials": 2, "n_warmup_steps": 10},
            "objective": "eval_loss",
            "seed": 0,
            "space": {
                "train.learning_rate": {"float": [1.0e-4, 2.0e-3], "log": True},
                "lora.r": {"categorical": [8, 16]},
                **({f"slices.{s}.weight": {"float": [0.1, 1.0]} for s in slices} if len(slices) > 1 else {}),
            },
        },
        "samples": {"prompts": [], "max_new_tokens": 64},
    }
    parsed = _validate(spec, folder, path)
    prepared = data.prepare(parsed, collect=True)
    tokenizer = models.load_tokenizer(models.resolve(model))
    spec["train"]["max_length"] = _max_length(prepared, tokenizer)
    spec["samples"]["prompts"] = _prompts(prepared.eval)
    n_train = sum(len(rows) for rows in prepared.slices.values())
    spec = {**{k: v for k, v in spec.items() if k != "samples"}, "budget": _budget(spec, n_train), "samples": spec["samples"]}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target.write_text(_render(spec, target, path, len(records), fmt, col, column, n_train), encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {target} ({e.strerror}); check that folder") from None
    console.print(f"wrote [bold]{target}[/] ({len(slices)} slice{'s' * (len(slices) > 1)}, format {fmt}); checking it:")
    final = spec_mod.load(target)  # check what was written, as `afina sweep` will read it
    report = health.run(final, data.prepare(final, collect=True), tokenizer)
    health_report.render(report, console)
    console.print(f"Next: edit {target} if you like, then [bold]afina sweep {target}[/]")
    return report


def slice_column(records: list[dict], content: set[str]) -> str | None:
    """A text column with 2..12 values, each on at least 2 rows: preferred names first, then the finest."""
    candidates = []
    for column, value in records[0].items():
        if column in content or not isinstance(value, str):
            continue
        counts = Counter(r.get(column) for r in records)
        if 2 <= len(counts) <= MAX_SLICES and min(counts.values()) >= 2 and all(isinstance(v, str) and v.strip() for v in counts):
            candidates.append((column.lower() not in PREFERRED, -len(counts), column))
    return min(candidates)[2] if candidates else None


def _slug(value) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")[:64].strip("_")  # a slice name (spec.NAME)


def _validate(spec: dict, folder: Path, data_file: Path):
    """The spec as afina will read it, with the data path made absolute: the folder may not exist yet."""
    import copy

    from pydantic import ValidationError

    from afina.spec.schema import Spec

    spec = copy.deepcopy(spec)
    for s in spec["data"]["slices"].values():
        s["path"] = str(data_file.resolve())
    try:
        return Spec.model_validate({**spec, "base_dir": folder})
    except ValidationError as e:  # e.g. two values that slug to one name
        raise UserError(
            f"could not build a spec from this data ({e.errors()[0]['msg']}); write it by hand from experiments/quickstart.yaml"
        ) from None


def _max_length(prepared: data.Prepared, tokenizer) -> int:
    """Room for 95% of the rows after the chat template, in steps of 64, capped at TRL's default 1024."""
    rows = [r for rows in prepared.slices.values() for r in rows]
    if not rows:
        return 256
    lengths = sorted(token_lengths.tokens(rows, tokenizer))
    p95 = lengths[int(0.95 * (len(lengths) - 1))]
    return int(min(1024, max(128, -(-p95 // 64) * 64)))


def _budget(spec: dict, n_train: int) -> dict:
    """Every planned trial's steps, plus a refit of REFIT_EPOCHS passes over the training rows: at least two
    trials long (shorter buys nothing over the winner itself), at most four times the search (a CPU's day)."""
    train, trial = spec["train"], spec["train"]["max_steps"]
    search = spec["search"]["n_trials"] * trial
    per_epoch = -(-n_train // (train["per_device_train_batch_size"] * train.get("gradient_accumulation_steps", 1)))
    refit = min(max(REFIT_EPOCHS * per_epoch, 2 * trial), 4 * search)
    share = math.floor(100 * refit / (search + refit)) / 100  # rounded down: every planned trial still fits
    while int((search + refit) * (1 - share)) < search:  # float rounding in budget.search_share
        share -= 0.01
    return {"steps": search + refit, "refit": round(share, 2)}


def _prompts(rows: list[chat_rows.Row], n: int = 3) -> list[dict]:
    out = []
    for row in rows[:n]:
        users = [m["content"] for m in row.messages if m["role"] == "user"]
        answer = next((m["content"] for m in reversed(row.messages) if m["role"] == "assistant"), None)
        prompt = users[-1] if users else " ".join((answer or "").split()[:8])  # text data: the model continues
        if prompt:
            out.append({"prompt": prompt, "reference": answer})
    return out


def _render(spec: dict, target: Path, source: Path, n: int, fmt: str, col: dict, column: str | None, n_train: int) -> str:
    used = ", ".join(f"{k}={v}" for k, v in col.items() if v)
    train, b = spec["train"], spec["budget"]
    search = spec["search"]["n_trials"] * train["max_steps"]
    refit = b["steps"] - search
    epochs = refit * train["per_device_train_batch_size"] / max(1, n_train)
    notes = {
        "name": [
            f"Written by `afina init {source}`: {n} rows, format {fmt} ({used}).",
            "Check the data again after any edit: afina check " + str(target),
        ],
        "model": ["Embedded SmolLM2-135M-Instruct (works offline); a Hugging Face id or a local folder also works."],
        "data": [
            f"One slice per value of column {column!r}; the search weighs them." if column else "One slice: the whole file.",
            "eval: a seeded 10% of every slice is held out (max_rows caps it so evaluation stays quick on a CPU).",
            *(
                [
                    "The search weighs these slices, so eval.slices names them: the eval set is your whole file's task,",
                    "and `afina check` warns that the objective favours mixes that train on it. Point eval.path at",
                    "held-out rows of the task you care about to measure that instead.",
                ]
                if len(spec["data"]["slices"]) > 1
                else []
            ),
        ],
        "train": ["Any TRL SFTConfig field. max_length fits 95% of the rows after the chat template."],
        "lora": ["Any PEFT LoraConfig field."],
        "search": ["Dotted keys: train.X, lora.X, slices.NAME.include|weight|fraction. Raise n_trials on a GPU."],
        "budget": [
            f"Training steps of the whole sweep: {spec['search']['n_trials']} trials x {train['max_steps']} steps = {search}"
            " for the search,",
            f"then the refit trains the winner's settings again for the rest (at least {refit} steps, about {epochs:.1f} epochs",
            f"of the {n_train} training rows; steps that pruning saves go to it too). The refit is the model",
            "`afina promote` registers: a trial only has to rank settings, the refit's longer training makes the model.",
            "Delete this section for no refit (the best trial is promoted).",
        ],
        "samples": ["Prompts drawn from the eval rows; every trial answers them, so compare the answers in MLflow."],
    }
    baseline = [
        "# Was the sweep worth it? Uncomment to train one more run at TRL's and PEFT's documented defaults, compared",
        f"# with the winner. It costs as many steps as the whole sweep (about {b['steps']}): the sweep takes twice as long.",
        "# baseline: {default_run: true}",
        "",
    ]
    out = [f"# afina sweep {target.as_posix()}", "#"]
    for key, value in spec.items():
        out += [f"# {line}" for line in notes.get(key, [])]
        out.append(yaml.dump(_Top({key: value}), Dumper=_Plain, sort_keys=False, allow_unicode=True, width=120).rstrip())
        out.append("")
        if key == "budget":
            out += baseline
    return "\n".join(out)


class _Plain(yaml.SafeDumper):
    """Write repeated values out in full: `&id001` anchors puzzle people editing the file."""

    def ignore_aliases(self, data):
        return True


def _short(value) -> bool:
    return isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) < 40)


def _flow_list(dumper, value):  # [1.0e-4, 2.0e-3] on one line
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=len(value) <= 8 and all(map(_short, value)))


def _flow_dict(dumper, value):  # {float: [0.1, 1.0]}, {category: REFUND} on one line
    flat = len(value) <= 3 and all(_short(v) or (isinstance(v, list) and len(v) <= 8 and all(map(_short, v))) for v in value.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", value.items(), flow_style=flat)


class _Top(dict):
    """A top-level section: always block style."""


_Plain.add_representer(list, _flow_list)
_Plain.add_representer(dict, _flow_dict)
_Plain.add_representer(_Top, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=False))
