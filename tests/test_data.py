"""Sources, formats and column mapping down to what SFTTrainer tokenizes; slices, mixtures, fingerprints, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from afina import UserError, data, models
from afina.spec import schema as spec_mod
from helpers.specs import jsonl, spec_file, tiny_spec, write_spec

CHAT = [{"role": "user", "content": "hola"}, {"role": "assistant", "content": "¡Hola! ¿En qué te ayudo?"}]


def sources(tmp: Path) -> dict[str, tuple[dict, list[list[dict]]]]:
    """Each format as a file, with its slice settings and the chats it must become."""
    import datasets

    u = lambda p, a: [{"role": "user", "content": p}, {"role": "assistant", "content": a}]  # noqa: E731
    jsonl(tmp / "chat.jsonl", [{"messages": CHAT}])
    (tmp / "pc.json").write_text(json.dumps([{"prompt": "¿Envío?", "completion": "Gratis desde 50 €."}]), encoding="utf-8")
    (tmp / "bitext.csv").write_text('instruction,response,category\n"cancel order 1, please",Sure: go to Orders.,ORDER\n', encoding="utf-8")
    jsonl(tmp / "alpaca.jsonl", [{"instruction": "Traduce", "input": "hello", "output": "hola"}])
    datasets.Dataset.from_list([{"text": "Prosa lírica."}]).to_parquet(str(tmp / "style.parquet"))
    datasets.Dataset.from_list([{"question": "Q?", "answer": "A."}]).save_to_disk(str(tmp / "saved"))
    (tmp / "parts").mkdir()
    jsonl(tmp / "parts" / "a.jsonl", [{"prompt": "p1", "completion": "c1"}])
    jsonl(tmp / "parts" / "b.jsonl", [{"prompt": "p2", "completion": "c2"}])
    return {
        "chat": ({"path": "chat.jsonl"}, [CHAT]),
        "pc": ({"path": "pc.json"}, [u("¿Envío?", "Gratis desde 50 €.")]),
        "bitext": (
            {"path": "bitext.csv", "system": "Be kind."},
            [[{"role": "system", "content": "Be kind."}, *u("cancel order 1, please", "Sure: go to Orders.")]],
        ),
        "alpaca": ({"path": "alpaca.jsonl"}, [u("Traduce\n\nhello", "hola")]),
        "style": ({"path": "style.parquet"}, [[{"role": "assistant", "content": "Prosa lírica."}]]),
        "saved": ({"path": "saved", "columns": {"prompt": "question", "completion": "answer"}}, [u("Q?", "A.")]),
        "glob": ({"path": "parts/*.jsonl"}, [u("p1", "c1"), u("p2", "c2")]),
    }


def test_every_format_reaches_sft_trainer_as_the_same_chat(project):
    from trl import SFTConfig, SFTTrainer

    srcs = sources(project)
    jsonl(project / "eval.jsonl", [{"messages": CHAT}])
    spec = spec_mod.load(spec_file(project, {n: s for n, (s, _) in srcs.items()}, {"path": "eval.jsonl"}))
    prepared = data.prepare(spec)
    for name, (_, chats) in srcs.items():
        assert [r.messages for r in prepared.slices[name]] == chats, name
    assert prepared.slices["bitext"][0].origin == "bitext.csv:1" and prepared.slices["bitext"][0].fields == [
        "system",
        "instruction",
        "response",
    ]
    assert prepared.slices["glob"][1].origin == "b.jsonl:1"

    # What TRL tokenizes is the chat template over exactly these messages.
    rows = [r for name in srcs for r in prepared.slices[name]]
    tok = models.load_tokenizer(models.resolve("tiny-random"))
    trainer = SFTTrainer(
        model=models.load_model(models.resolve("tiny-random")),
        processing_class=tok,
        args=SFTConfig(output_dir=str(project / "out"), report_to="none", use_cpu=True, max_length=None),
        train_dataset=data.to_dataset(rows),
    )
    got = [tok.decode(ids) for ids in trainer.train_dataset["input_ids"]]
    assert got == [tok.apply_chat_template(r.messages, tokenize=False) for r in rows]
    assert "<|im_start|>user\nTraduce\n\nhello<|im_end|>" in got[rows.index(prepared.slices["alpaca"][0])]


@pytest.fixture
def categories(project) -> Path:
    lines = ["instruction,response,category"] + [f"q{c}{i},a{c}{i},{c}" for c, n in (("A", 40), ("B", 20), ("C", 10)) for i in range(n)]
    (project / "cat.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    jsonl(project / "eval.jsonl", [{"prompt": "qe", "completion": "ae"}])
    return spec_file(
        project,
        {"a": {"path": "cat.csv", "where": {"category": "A"}}, "bc": {"path": "cat.csv", "where": {"category": ["B", "C"]}}},
        {"path": "eval.jsonl"},
    )


def choices(**over):
    base = {n: {"include": True, "weight": 1.0, "fraction": 1.0, "max_rows": None} for n in ("a", "bc")}
    for key, value in over.items():
        name, attr = key.split("__")
        base[name][attr] = value
    return base


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({}, {"a": 40, "bc": 30}),  # weights 1: every row once
        ({"a__fraction": 0.5}, {"a": 20, "bc": 30}),  # half of a, subsampled
        ({"a__max_rows": 10}, {"a": 10, "bc": 30}),
        ({"bc__weight": 0.5}, {"a": 51, "bc": 19}),  # 70 rows; bc's share 30*0.5/(40+15)
        ({"a__include": False}, {"a": 0, "bc": 30}),
        ({"bc__weight": 0.0}, {"a": 40, "bc": 0}),
    ],
)
def test_filters_weights_fractions_give_expected_counts(categories, over, expected):
    prepared = data.prepare(spec_mod.load(categories))
    assert {n: len(r) for n, r in prepared.slices.items()} == {"a": 40, "bc": 30}
    assert {r.extra["category"] for r in prepared.slices["bc"]} == {"B", "C"}
    assert prepared.slices["bc"][0].origin == "cat.csv:41"  # row numbers of the file, not of the slice
    rows, counts = data.mix(prepared, choices(**over), seed=0)
    assert counts == expected and len(rows) == sum(expected.values())
    again, _ = data.mix(prepared, choices(**over), seed=0)
    assert [r.key for r in again] == [r.key for r in rows]  # seeded


def test_mix_seed_changes_the_sample(categories):
    prepared = data.prepare(spec_mod.load(categories))
    one, _ = data.mix(prepared, choices(a__fraction=0.5), seed=0)
    two, _ = data.mix(prepared, choices(a__fraction=0.5), seed=1)
    assert data.fingerprint(one) != data.fingerprint(two)


def test_eval_split_is_seeded_and_capped_across_slices(categories):
    spec = spec_mod.load(categories)
    spec.data.eval = spec_mod.Eval(split=0.5, max_rows=20)
    first, second = data.prepare(spec), data.prepare(spec)
    assert [r.key for r in first.eval] == [r.key for r in second.eval] and len(first.eval) == 20
    assert {r.extra["category"] for r in first.eval} == {"A", "B", "C"}  # the cap does not keep slice a only
    assert {n: len(r) for n, r in first.slices.items()} == {"a": 20, "bc": 15}
    assert not {r.key for r in first.eval} & {r.key for rows in first.slices.values() for r in rows}


def test_fingerprints_ignore_order_and_see_one_changed_row(project):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(30)]
    jsonl(project / "eval.jsonl", [{"prompt": "qe", "completion": "ae"}])

    def prints(records) -> dict:
        jsonl(project / "d.jsonl", records)
        return data.prepare(spec_mod.load(spec_file(project, {"d": {"path": "d.jsonl"}}, {"path": "eval.jsonl"}))).fingerprints

    base = prints(rows)
    assert prints(rows) == base
    assert prints(random.Random(3).sample(rows, len(rows))) == base
    changed = [*rows[:-1], {"prompt": "p29", "completion": "c29!"}]
    assert prints(changed)["slice.d"] != base["slice.d"] and prints(changed)["eval"] == base["eval"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: (p / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n'), "d.jsonl:2: not valid JSON"),
        (lambda p: (p / "d.csv").write_text("question,reply\nq,a\n"), "cannot tell the format from columns ['question', 'reply']"),
        (lambda p: (p / "d.csv").write_text("instruction,category\nq,A\n"), "format prompt_completion needs a 'completion' column"),
        (lambda p: (p / "d.csv").write_text("prompt,completion\nq,a\n"), "filter column 'category' not in the data"),
        (lambda p: None, "'hf_org/some-dataset' is no local file, and as a Hugging Face dataset it needs the hub"),
    ],
)
def test_bad_sources_are_one_line_errors(project, cli, setup, message):
    setup(project)
    jsonl(project / "eval.jsonl", [{"prompt": "qe", "completion": "ae"}])
    name = next((p.name for p in project.iterdir() if p.name.startswith("d.")), "hf_org/some-dataset")
    slice_ = {
        "path": name,
        **({"where": {"category": "A"}} if "filter" in message else {}),
        **({"format": "prompt_completion"} if "needs a" in message else {}),
    }
    path = spec_file(project, {"d": slice_}, {"path": "eval.jsonl"})
    for command in ("check", "sweep"):
        code, _, err = cli(command, path, *(["--no-progress"] if command == "sweep" else []))
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (project / "mlruns").exists()


def test_weight_outside_0_1_and_empty_eval_are_user_errors(project, cli):
    jsonl(project / "d.jsonl", [{"prompt": "q", "completion": "a"}])
    (project / "eval.jsonl").write_text("")
    bad = spec_file(project, {"d": {"path": "d.jsonl", "weight": 1.5}}, {"path": "eval.jsonl"})
    code, _, err = cli("check", bad)
    assert code == 2 and "data.slices.d.weight" in err
    empty = spec_file(project, {"d": {"path": "d.jsonl"}}, {"path": "eval.jsonl"})
    code, out, _ = cli("check", empty)
    assert code == 2 and "data.eval: path: the eval set is empty" in out
    code, _, err = cli("sweep", empty, "--no-progress")
    assert code == 2 and "the eval set is empty" in err and not (project / "mlruns").exists()


def test_hub_ids_need_the_hub(project, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert data.files(["hf:org/name:validation", "org/name"], project) == [Path("hf:org/name:validation"), Path("hf:org/name")]
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        data.read(Path("hf:org/name"))
    with pytest.raises(UserError, match="not found"):
        data.files("data/faq.jsonl", project)


def test_trial_with_every_slice_excluded_is_pruned_with_a_reason(project, cli):
    import optuna

    spec = tiny_spec()
    spec["search"]["n_trials"] = 1
    spec["search"]["space"] = {f"slices.{n}.include": {"categorical": [False]} for n in ("faq", "productos", "poesia")}
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    [t] = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db").trials
    assert t.state.name == "PRUNED" and "every slice is excluded" in t.user_attrs["prune_reason"]
