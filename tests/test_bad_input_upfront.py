"""Bad input, third round: parser recursion bombs (YAML spec, JSONL data), a misspelt promote.objective, the
failures a sweep can know before its first step (every eval answer cut by max_length, weights that are not
safetensors, a judge that does not answer) and a token cache that an empty or broken entry can no longer poison."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest

from helpers.files import nothing_written
from helpers.specs import TIENDA, jsonl, tiny_spec, write_spec


def one_line(code: int, out: str, err: str) -> str:
    assert code == 2, (out, err[-2000:])
    assert err.startswith("error: ") and err.count("\n") == 1, err[-2000:]
    assert "Traceback" not in out + err
    return err


@pytest.mark.parametrize(
    "value, words",
    [
        ("[" * 20_000 + "]" * 20_000, "values nested more than 64 deep"),
        ("{a: " * 5_000 + "1" + "}" * 5_000, "values nested more than 64 deep"),
    ],
)
def test_deeply_nested_spec_value_is_one_line(project, cli, value, words):
    import yaml

    text = yaml.safe_dump(tiny_spec(), sort_keys=False) + f"description: {value}\n"
    (project / "spec.yaml").write_text(text, encoding="utf-8")
    line = len(text.splitlines())
    with nothing_written(project):
        t0 = time.monotonic()
        err = one_line(*cli("sweep", "spec.yaml", "--no-progress"))
        assert time.monotonic() - t0 < 10
    assert f"spec.yaml: line {line} is not valid YAML ({words}" in err, err


def test_aliases_that_nest_deeper_than_the_text_are_one_line(project, cli):
    chain = "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 3_000))
    (project / "spec.yaml").write_text("name: deep\na0: &a0 [1]\n" + chain, encoding="utf-8")
    with nothing_written(project):
        err = one_line(*cli("check", "spec.yaml"))
    assert "aliases nest values more than 64 deep" in err, err


def test_a_spec_nested_below_the_limit_still_loads(tmp_path):
    from afina.spec import schema as spec_mod

    spec = tiny_spec()
    spec["train"]["max_steps"] = 4
    import yaml

    text = yaml.safe_dump(spec, sort_keys=False).replace("max_steps: 4", "max_steps: 4\n  dataset_kwargs: " + "{a: " * 50 + "1" + "}" * 50)
    path = tmp_path / "ok.yaml"
    path.write_text(text, encoding="utf-8")
    assert spec_mod.load(path).train["dataset_kwargs"]["a"]["a"]["a"]  # 50 levels: a real, if odd, value


@pytest.mark.parametrize("depth", [100_000, 200])  # past Python's stack, and within it but past the limit
def test_deeply_nested_jsonl_line_is_one_line_naming_file_and_line(project, cli, depth):
    rows = [json.loads(line) for line in (TIENDA / "faq.jsonl").read_text(encoding="utf-8").splitlines()[:5]]
    data = jsonl(project / "faq.jsonl", rows)
    with data.open("a", encoding="utf-8") as f:
        f.write('{"messages": ' + "[" * depth + "]" * depth + "}\n")
    spec = tiny_spec()
    spec["data"]["slices"]["faq"]["path"] = str(data)
    write_spec(project, spec)
    with nothing_written(project):
        err = one_line(*cli("sweep", "spec.yaml", "--no-progress"))
    assert "faq.jsonl:6: values nested more than 64 deep" in err, err
    err = one_line(*cli("check", "spec.yaml"))
    assert "faq.jsonl:6:" in err


@pytest.mark.parametrize(
    "objective, words",
    [
        ("bleu_of_nothing", "promote.objective 'bleu_of_nothing' is not one of search.objective; use one of: eval_loss, chrf"),
        ("chrF", "promote.objective 'chrF' is not one of search.objective (did you mean 'chrf'?); use one of: eval_loss, chrf"),
    ],
)
def test_promote_objective_must_name_an_objective(project, cli, objective, words):
    spec = tiny_spec(promote={"objective": objective})
    spec["search"]["objective"] = ["eval_loss", "chrf"]
    write_spec(project, spec)
    with nothing_written(project):
        err = one_line(*cli("sweep", "spec.yaml", "--no-progress"))
    assert words in err, err
    spec["promote"]["objective"] = "chrf"  # the same spec with the right name passes validation
    from afina.spec import schema as spec_mod

    assert spec_mod.load(write_spec(project, spec, "ok.yaml")).promote.objective == "chrf"


def test_max_length_that_cuts_every_eval_answer_is_refused_before_any_store(project, cli):
    spec = tiny_spec()
    spec["train"]["max_length"] = 16  # every prompt of the quickstart's eval rows is longer
    write_spec(project, spec)
    with nothing_written(project):
        err = one_line(*cli("sweep", "spec.yaml", "--no-progress"))
    assert "max_length 16 cuts off the answer of every" in err and "raise train.max_length above" in err, err
    code, out, err = cli("check", "spec.yaml")
    assert code == 2
    assert "data.eval: max_length: max_length 16 cuts off the answer of every eval row" in out + err
    # searched: the fix names the lower bound of the range
    spec["search"]["space"]["train.max_length"] = {"int": [16, 512]}
    write_spec(project, spec)
    with nothing_written(project):
        err = one_line(*cli("sweep", "spec.yaml", "--no-progress"))
    assert "raise the lower bound of search.space train.max_length above" in err, err


def test_max_length_that_cuts_some_answers_warns_and_counts_them(tmp_path):
    from afina import data, models
    from afina.data import health
    from afina.spec import schema as spec_mod

    spec = tiny_spec()  # max_length 64: a few long product prompts lose their whole answer, most keep it
    spec = spec_mod.load(write_spec(tmp_path, spec))
    prepared = data.prepare(spec, collect=True)
    report = health.run(spec, prepared, models.load_tokenizer(models.resolve("tiny-random")))
    cut = [i for i in report.issues if i.kind == "answer-cut"]
    assert not report.errors
    assert 0 < len(cut) < len(prepared.slices["productos"])
    assert report.slices["productos"]["answer_cut"] == sum(i.where.startswith("productos.jsonl") for i in cut)
    # keep_end truncation keeps the answer, and an all-token objective masks nothing: no cut answers
    for train in ({"truncation_mode": "keep_end"}, {"completion_only_loss": False}):
        other = spec.model_copy(update={"train": {**spec.train, **train}})
        report = health.run(other, prepared, models.load_tokenizer(models.resolve("tiny-random")))
        assert not [i for i in report.issues if i.kind == "answer-cut"], train


@pytest.mark.parametrize("weights", [b"not safetensors, just some text" * 8, b"", "truncated"])
def test_weights_that_are_not_safetensors_are_refused_before_any_store(project, cli, weights):
    from afina import models

    src = models.resolve("tiny-random")
    folder = project / "my-model"
    shutil.copytree(src, folder)
    good = (src / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(good[: len(good) // 2] if weights == "truncated" else weights)
    write_spec(project, tiny_spec(model={"ref": str(folder), "method": "lora"}))
    with nothing_written(project):
        err = one_line(*cli("sweep", "spec.yaml", "--no-progress"))
    assert f"model.ref '{folder}': model.safetensors is not a readable safetensors file" in err, err
    (folder / "model.safetensors").write_bytes(good)  # positive control: the same folder with its real weights
    models.check(folder, str(folder), False)


def _dead_port() -> int:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_judge_that_does_not_answer_at_the_start_is_refused_before_any_store(project, cli):
    port = _dead_port()
    spec = tiny_spec(evaluate={"metrics": ["length"], "judge": {"url": f"http://judge:pw-s3cr3t@127.0.0.1:{port}/v1", "timeout": 5}})
    spec["search"]["objective"] = "judge"
    write_spec(project, spec)
    with nothing_written(project):
        t0 = time.monotonic()
        err = one_line(*cli("sweep", "spec.yaml", "--no-progress"))
        assert time.monotonic() - t0 < 60
    assert "evaluate.judge: judge endpoint" in err and "is unreachable" in err and "start it or fix evaluate.judge.url" in err, err
    assert "s3cr3t" not in err


def test_local_judge_with_broken_weights_is_refused_before_any_store(project, cli):
    from afina import models

    folder = project / "judge-model"
    shutil.copytree(models.resolve("tiny-random"), folder)
    (folder / "model.safetensors").write_bytes(b"<html>404</html>")
    spec = tiny_spec(evaluate={"metrics": ["length"], "judge": {"model": str(folder)}})
    write_spec(project, spec)
    with nothing_written(project):
        err = one_line(*cli("sweep", "spec.yaml", "--no-progress"))
    assert f"evaluate.judge.model '{folder}': model.safetensors is not a readable safetensors file" in err, err


# --- the token cache ------------------------------------------------------------------------------


def _tokens(spec_dict: dict, tmp_path, cache):
    from trl import SFTConfig

    from afina import data, models
    from afina.data import token_cache
    from afina.spec import schema as spec_mod

    spec = spec_mod.load(write_spec(tmp_path, spec_dict))
    prepared = data.prepare(spec)
    tok = models.load_tokenizer(models.resolve("tiny-random"))
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_length=spec.train["max_length"], report_to="none", bf16=False)
    token_cache._TOKENS.clear()  # this worker's memory copy: every call here goes to the disk cache
    return token_cache.tokenized(prepared, tok, "tiny", args, cache)


def test_an_empty_token_set_is_never_cached(tmp_path):
    spec = tiny_spec()
    spec["train"]["max_length"] = 4  # every answer is cut: nothing to train on (poesia's texts answer nothing)
    del spec["data"]["slices"]["poesia"], spec["search"]["space"]["slices.poesia.include"]
    cache = tmp_path / "tokens"
    assert _tokens(spec, tmp_path, cache) == {}
    assert not cache.exists() or not list(cache.iterdir()), list(cache.iterdir())


@pytest.mark.parametrize("broken", ["empty set", "no arrow file", "garbage"])
def test_a_cache_entry_that_does_not_load_is_rebuilt(tmp_path, broken):
    import datasets

    cache = tmp_path / "tokens"
    table = _tokens(tiny_spec(), tmp_path, cache)
    assert table
    (entry,) = list(cache.iterdir())
    shutil.rmtree(entry)
    if broken == "empty set":  # what an older afina kept after a spec that cut every answer
        datasets.Dataset.from_dict({"key": [], "input_ids": [], "labels": []}).save_to_disk(str(entry))
    elif broken == "no arrow file":
        entry.mkdir()
        (entry / "dataset_info.json").write_text("{}")
        (entry / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')
    else:
        entry.mkdir()
        (entry / "state.json").write_text("not json")
    with pytest.raises(Exception):  # noqa: B017 - the entry really is unreadable (positive control)
        assert len(datasets.load_from_disk(str(entry)))
    assert _tokens(tiny_spec(), tmp_path, cache) == table  # rebuilt, not an IndexError
    assert [p.name for p in cache.iterdir()] == [entry.name]
    assert len(datasets.load_from_disk(str(entry))) == len(table)  # and saved again, whole
