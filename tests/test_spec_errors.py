"""Bad input never gets far: `afina sweep` exits 2 with one `error:` line naming the field and the
fix, and the project folder is left exactly as it was (no mlruns/, no study, no run)."""

from __future__ import annotations

import pytest
import yaml

from helpers.files import nothing_written
from helpers.specs import tiny_spec


def _spec(**overrides):
    return lambda project: tiny_spec(**overrides)


def _edit(fn):
    """A case built by editing a full tiny spec in place."""

    def build(project):
        spec = tiny_spec()
        fn(spec, project)
        return spec

    return build


def _drop_search(spec, project):
    spec["serch"] = spec.pop("search")


def _typo_nested(spec, project):
    spec["search"]["n_trails"] = spec["search"].pop("n_trials")


def _typo_slice(spec, project):
    spec["data"]["slices"]["faq"] = {"pth": spec["data"]["slices"]["faq"]["path"]}


def _missing_file(spec, project):
    spec["data"]["slices"]["faq"]["path"] = "data/faqs.jsonl"


def _bad_jsonl(spec, project):
    (project / "faq.jsonl").write_text(
        '{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{"prompt": "e", \n', encoding="utf-8"
    )
    spec["data"]["slices"]["faq"]["path"] = "faq.jsonl"


def _unknown_column(spec, project):
    spec["data"]["slices"]["faq"]["where"] = {"categoria": "envios"}


def _weight(spec, project):
    spec["data"]["slices"]["faq"]["weight"] = 3


def _space(space):
    def edit(spec, project):
        spec["search"]["space"] = space

    return edit


def _no_space(spec, project):
    del spec["search"]["space"]


def _data_file(name: str, content: bytes, where: str | None = None):
    """A slice whose file is written by the case (content, or "fifo" for a named pipe)."""

    def edit(spec, project):
        import os

        if content == b"fifo":
            os.mkfifo(project / name)
        elif content == b"dir":
            (project / name).mkdir()
        else:
            (project / name).write_bytes(content)
        spec["data"]["slices"]["faq"]["path"] = name

    return edit


def _rename_slice(new: str):
    def edit(spec, project):
        spec["data"]["slices"][new] = spec["data"]["slices"].pop("poesia")
        spec["search"]["space"] = {f"slices.{new}.include": {"categorical": [True, False]}}

    return edit


def _train(**values):
    def edit(spec, project):
        spec["train"].update(values)

    return edit


def _eval_both(spec, project):
    spec["data"]["eval"]["split"] = 0.1


def _lora_space_full(spec, project):
    spec["model"]["method"] = "full"
    spec["search"]["space"] = {"lora.r": {"categorical": [4, 8]}}


# (id, how to build the spec (a dict, or raw YAML text), words the one-line message must contain)
CASES = [
    ("top-level typo", _edit(_drop_search), ["unknown key 'serch'", "did you mean 'search'"]),
    ("nested typo", _edit(_typo_nested), ["unknown key 'search.n_trails'", "did you mean 'n_trials'"]),
    ("slice key typo", _edit(_typo_slice), ["data.slices.faq.pth", "did you mean 'path'"]),
    ("tracking typo", _spec(tracking={"mlflow_url": "sqlite:///x.db"}), ["tracking.mlflow_url", "did you mean 'mlflow_uri'"]),
    ("wrong type", _spec(search={"n_trials": "many"}), ["search.n_trials", "integer"]),
    ("wrong type in train", _spec(train={"max_steps": "four"}), ["train.max_steps must be a number"]),
    ("bool field not bool", _spec(train={"gradient_checkpointing": "yes"}), ["train.gradient_checkpointing must be true or false"]),
    ("missing data file", _edit(_missing_file), ["data file 'data/faqs.jsonl' not found", "fix the path"]),
    ("malformed jsonl line", _edit(_bad_jsonl), ["faq.jsonl:3: not valid JSON"]),
    ("filter on unknown column", _edit(_unknown_column), ["filter column 'categoria' not in the data"]),
    (
        "unknown slice in space",
        _edit(_space({"slices.poesias.include": {"categorical": [True, False]}})),
        ["unknown slice 'poesias'", "did you mean 'poesia'"],
    ),
    ("slice attribute", _edit(_space({"slices.poesia.inclde": {"categorical": [True, False]}})), ["did you mean 'include'"]),
    ("missing space", _edit(_no_space), ["search.space is missing", "space: {}"]),
    ("space section", _edit(_space({"training.learning_rate": {"float": [1e-4, 1e-3]}})), ["did you mean 'train'"]),
    (
        "unknown SFTConfig field",
        _spec(train={"learning_rat": 1e-3}),
        ["train.learning_rat is not a known field", "did you mean 'learning_rate'"],
    ),
    (
        "unknown SFTConfig field in space",
        _edit(_space({"train.lerning_rate": {"float": [1e-4, 1e-3]}})),
        ["not a known field", "did you mean 'learning_rate'"],
    ),
    ("unknown LoraConfig field", _spec(lora={"lora_alpah": 16}), ["lora.lora_alpah", "did you mean 'lora_alpha'"]),
    ("lora space with full method", _edit(_lora_space_full), ["lora fields need model.method: lora"]),
    ("owned field", _spec(train={"output_dir": "out"}), ["train.output_dir is managed by afina"]),
    ("owned report_to", _spec(train={"report_to": "wandb"}), ["train.report_to is managed by afina"]),
    ("bounds reversed", _edit(_space({"train.learning_rate": {"float": [1e-3, 1e-5]}})), ["must be [low, high] with low < high"]),
    (
        "log with low <= 0",
        _edit(_space({"train.learning_rate": {"float": [0, 1e-3], "log": True}})),
        ["log scale needs a positive low bound"],
    ),
    ("two kinds in a dim", _edit(_space({"lora.r": {"int": [2, 8], "categorical": [4]}})), ["exactly one of float"]),
    ("empty categorical", _edit(_space({"lora.r": {"categorical": []}})), ["categorical needs at least one choice"]),
    ("grid without step", _spec(search={"sampler": "grid"}), ["grid sampler needs a step"]),
    ("unknown sampler", _spec(search={"sampler": "cmaes"}), ["search.sampler", "'tpe'"]),
    ("unknown pruner", _spec(search={"pruner": "patient"}), ["search.pruner", "'median'"]),
    ("bad pruner args", _spec(search={"pruner": "median", "pruner_args": {"warmup": 3}}), ["search.pruner_args", "warmup"]),
    ("bad sampler args", _spec(search={"sampler_args": {"startup": 3}}), ["search.sampler_args", "startup"]),
    ("eval with path and split", _edit(_eval_both), ["exactly one of eval.path or eval.split"]),
    ("direction count", _spec(search={"direction": ["minimize", "maximize"]}), ["search.direction has 2 entries for 1 objectives"]),
    ("bad study name", _spec(name="my study!"), ["name"]),
    (
        "bad optuna storage scheme",
        _spec(tracking={"optuna_storage": "redis://localhost/0"}),
        ["tracking.optuna_storage", "unsupported scheme 'redis'"],
    ),
    ("bad mlflow scheme", _spec(tracking={"mlflow_uri": "ftp://host/mlflow"}), ["tracking.mlflow_uri", "unsupported scheme 'ftp'"]),
    ("model path without config", _spec(model={"ref": "./no-such-model"}), ["model.ref './no-such-model'", "config.json"]),
    ("model id not a hub id", _spec(model={"ref": "smollm3"}), ["model.ref 'smollm3' is neither a folder"]),
    ("hub id not cached", _spec(model={"ref": "nobody-here/no-model-xyz"}), ["not in the local Hugging Face cache"]),
    ("bad method", _spec(model={"ref": "tiny-random", "method": "qlora"}), ["model.method"]),
    ("bad YAML", "name: tiny\nsearch: [unclosed\n", ["is not valid YAML", "line"]),
    ("not a mapping", "- name: tiny\n", ["a spec is a YAML mapping"]),
    ("no data section", "name: tiny\nsearch: {space: {train.learning_rate: {float: [1.0e-4, 1.0e-3]}}}\n", ["data", "Field required"]),
    ("weight out of range", _edit(_weight), ["data.slices.faq.weight", "less than or equal to 1"]),
    # spec content that used to crash or leave a study behind (issue 16)
    ("negative seed", _spec(search={"seed": -1}), ["search.seed", "greater than or equal to 0"]),
    (
        "mapping in where",
        _edit(lambda s, p: s["data"]["slices"]["faq"].update(where={"category": {"a": 1}})),
        ["where.category", "a value or a list"],
    ),
    ("slice name MLflow rejects", _edit(_rename_slice("faq (v2)")), ["slice name 'faq (v2)' is not allowed"]),
    ("slice name with a dot", _edit(_rename_slice("poesia.v2")), ["slice name 'poesia.v2' is not allowed"]),
    ("very long slice name", _edit(_rename_slice("s" * 300)), ["is not allowed", "at most 64 characters"]),
    ("very long study name", _spec(name="n" * 300), ["name", "at most 64 characters"]),
    (
        "metric name MLflow rejects",
        _spec(evaluate={"metrics": [{"contains": ["x"], "name": "has x?"}]}),
        ["evaluate.metrics[0]", "not allowed"],
    ),
    ("not UTF-8", "name: tíny\n".encode("latin-1"), ["is not UTF-8"]),
    (
        "alias bomb",
        "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcde", "bcdef", strict=True)),
        ["alias bomb"],
    ),
    ("recursive alias", "a: &a [*a]\n", ["alias refers to a node that contains it"]),
    ("duplicate top-level key", lambda p: yaml.safe_dump(tiny_spec(), sort_keys=False) + "name: other\n", ["duplicate key 'name'"]),
    (
        "duplicate nested key",
        lambda p: yaml.safe_dump(tiny_spec(), sort_keys=False).replace("  n_trials: 3\n", "  n_trials: 3\n  n_trials: 30\n"),
        ["duplicate key 'n_trials'"],
    ),
    ("two documents", lambda p: yaml.safe_dump(tiny_spec(), sort_keys=False) + "---\nname: x\n", ["several YAML documents"]),
    ("a number, not a mapping", "42\n", ["a spec is a YAML mapping"]),
    # values that were accepted and then failed every trial
    ("step 0", _edit(_space({"lora.r": {"int": [2, 8], "step": 0}})), ["step", "greater than 0"]),
    ("int log with step", _edit(_space({"lora.r": {"int": [2, 8], "step": 2, "log": True}})), ["log: true and step cannot be combined"]),
    ("infinite bound", lambda p: yaml.safe_dump(tiny_spec(), sort_keys=False).replace("- 0.01", "- .inf"), ["finite"]),
    (
        "string learning rate searched",
        _edit(_space({"train.learning_rate": {"categorical": [1e-4, "fast"]}})),
        ["must be a number, not 'fast'"],
    ),
    ("batch size 0", _edit(_train(per_device_train_batch_size=0)), ["train.per_device_train_batch_size = 0 is out of range"]),
    ("LoRA r 0 at the low end", _edit(_space({"lora.r": {"int": [0, 8]}})), ["search.space.lora.r", "lora.r = 0 is out of range"]),
    ("float range on an int field", _edit(_space({"lora.r": {"float": [2, 8]}})), ["lora.r must be a whole number"]),
    ("searched weight above 1", _edit(_space({"slices.faq.weight": {"float": [0.5, 3.0]}})), ["slices.faq.weight", "between 0 and 1"]),
    (
        "unknown optimizer searched",
        _edit(_space({"train.optim": {"categorical": ["adamw_torch", "adamw_typo"]}})),
        ["search.space.train.optim", "TRL/PEFT refuse"],
    ),
    ("secret in train", _spec(train={"hub_token": "hf_abc"}), ["train.hub_token holds a secret"]),
    # stores
    ("in-memory sqlite", _spec(tracking={"mlflow_uri": "sqlite://"}), ["in-memory SQLite"]),
    ("s3 artifact root", _spec(tracking={"artifact_root": "s3://bucket/prefix"}), ["not a local folder", "--artifacts-destination"]),
    # data files
    ("FIFO as a slice", _edit(_data_file("pipe.jsonl", b"fifo")), ["pipe.jsonl: is not a regular file"]),
    ("folder without data", _edit(_data_file("folder", b"dir")), ["folder: a data folder must be saved with datasets' save_to_disk"]),
    ("ragged CSV", _edit(_data_file("r.csv", b"prompt,completion\na,b\nc,d,e\n")), ["r.csv:3: 3 fields where the header has 2"]),
    (
        "text named .parquet",
        _edit(_data_file("t.parquet", b"just some text, not parquet at all\n" * 3)),
        ["t.parquet: is not a Parquet file"],
    ),
    ("UTF-16 CSV", _edit(_data_file("u.csv", "prompt,completion\nhola,adiós\n".encode("utf-16"))), ["u.csv: is UTF-16 text", "UTF-8"]),
    (
        "latin-1 JSONL",
        _edit(_data_file("l.jsonl", '{"prompt": "adiós", "completion": "sí"}\n'.encode("latin-1"))),
        ["l.jsonl: is not UTF-8"],
    ),
    ("ablate seeds", _spec(search={"ablate": {"seeds": 0}}), ["search.ablate.seeds", "greater than or equal to 1"]),
    ("ablate typo", _spec(search={"ablate": {"seed": 3}}), ["unknown key 'search.ablate.seed'", "did you mean 'seeds'"]),
]


@pytest.mark.parametrize(("build", "words"), [pytest.param(b, w, id=i) for i, b, w in CASES])
def test_bad_spec_exits_2_and_writes_nothing(project, cli, build, words):
    spec = build if isinstance(build, (str, bytes)) else build(project)
    path = project / "spec.yaml"
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    else:
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    with nothing_written(project):
        code, out, err = cli("sweep", "spec.yaml", "--no-progress")
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    assert "Traceback" not in out + err


def test_missing_spec_file(project, cli):
    code, _, err = cli("sweep", "experiments/nope.yaml")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: experiments/nope.yaml: no such spec file")
    assert not (project / "mlruns").exists()


def test_n_trials_flag_below_one(project, cli):
    (project / "spec.yaml").write_text(yaml.safe_dump(tiny_spec()), encoding="utf-8")
    code, _, err = cli("sweep", "spec.yaml", "--n-trials", "0")
    assert code == 2 and err == "error: --n-trials must be at least 1\n"
    assert not (project / "mlruns").exists()


def test_unreachable_mlflow_store_leaves_no_study(project, cli):
    """A store that cannot be reached is reported before the Optuna study is created."""
    spec = tiny_spec(tracking={"mlflow_uri": "postgresql://postgres@127.0.0.1:1/nothing"})
    (project / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    code, out, err = cli("sweep", "spec.yaml", "--no-progress")
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "mlflow_uri" in err, err
    assert not (project / "mlruns").exists()
