"""`afina check` finds planted problems by row, and a sweep runs it first and logs its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from afina import data
from afina.data import health
from afina.spec import schema as spec_mod
from helpers.specs import TIENDA, jsonl, spec_file, tiny_spec, write_spec

LONG = "palabra " * 200


def chat(user, answer, *more):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}, *more]}


@pytest.fixture
def messy(project) -> Path:
    """A chat export with one planted problem per row (row numbers are what the report must name)."""
    jsonl(
        project / "train.jsonl",
        [
            chat("¿Hacéis envíos a Bilbao?", "Sí, en 48 horas."),  # 1
            chat("¿Puedo devolver un pedido?", "Tienes 30 días."),  # 2
            chat("¿Hacéis envíos a Bilbao?", "Sí, en 48 horas."),  # 3 exact duplicate of 1
            chat("¿puedo DEVOLVER un pedido", "tienes 30 dias"),  # 4 near duplicate of 2
            chat("¿Tenéis tallas grandes?", ""),  # 5 empty answer
            chat("¿Abrís el domingo?", "No"),  # 6 trivially short answer
            chat("Cuéntame todo", LONG),  # 7 longer than max_length
            {
                "messages": [
                    {"role": "user", "content": "hola"},
                    {"role": "system", "content": "x"},
                    {"role": "assistant", "content": "Hola, dime."},
                ]
            },  # 8 system turn not first
            chat("¿Y el cambio de talla?", "Gratis.", {"role": "user", "content": "¿seguro?"}),  # 9 ends on a user turn
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "cinco"}]},  # 10 non-string content
            chat("¿Dónde está mi pedido?", "Te mandamos el número de seguimiento por email."),  # 11 leaks into eval
        ],
    )
    jsonl(
        project / "eval.jsonl",
        [
            chat("¿Cuánto cuesta el envío?", "Gratis desde 50 €."),
            chat("¿dónde está mi pedido", "Te mandamos el número de seguimiento por email"),
        ],
    )
    return spec_file(project, {"tienda": {"path": "train.jsonl"}}, {"path": "eval.jsonl"})


def test_check_names_each_planted_problem_by_row(messy, cli, project):
    code, out, _ = cli("check", messy, "--json", "report.json", "--markdown", "report.md")
    assert code == 2, out
    report = json.loads((project / "report.json").read_text())
    found = {(i["kind"], i["where"], i["field"], i["level"]) for i in report["issues"]}
    assert found == {
        ("duplicate", "train.jsonl:3", "messages", "warning"),
        ("near-duplicate", "train.jsonl:4", "messages", "warning"),
        ("empty", "train.jsonl:5", "messages[1].content", "error"),
        ("short", "train.jsonl:6", "messages[1].content", "warning"),
        ("too-long", "train.jsonl:7", "messages", "warning"),
        ("role-order", "train.jsonl:8", "messages[1].role", "error"),
        ("role-order", "train.jsonl:9", "messages[2].role", "warning"),
        ("schema", "train.jsonl:10", "messages[0].content", "error"),
        ("leakage", "eval.jsonl:2", "messages", "error"),
    }
    by_kind = {i["kind"]: i["message"] for i in report["issues"]}
    assert "exact duplicate of train.jsonl:1" in by_kind["duplicate"] and "train.jsonl:2" in by_kind["near-duplicate"]
    assert "also a training row (train.jsonl:11)" in by_kind["leakage"]
    assert "truncated to max_length 64" in by_kind["too-long"]
    assert report["slices"]["tienda"]["rows"] == 10 and report["slices"]["tienda"]["truncated"] == 1
    assert report["slices"]["tienda"]["tokens"]["max"] > 64 > report["slices"]["eval"]["tokens"]["max"]
    assert "train.jsonl:7" in out and "check: 4 errors, 5 warnings" in out
    assert "| train.jsonl:5 | messages[1].content | empty answer; fill it in or drop the row |" in (project / "report.md").read_text()


def test_csv_problems_name_the_column(project, cli):
    (project / "d.csv").write_text("instruction,response\nhola,Hola.\n,sin pregunta\nsin respuesta,\n¿ok?, \n", encoding="utf-8")
    jsonl(project / "eval.jsonl", [chat("q", "a")])
    code, out, _ = cli("check", spec_file(project, {"d": {"path": "d.csv"}}, {"path": "eval.jsonl"}))
    assert code == 2
    assert "d.csv:2: instruction: is missing or empty" in out and "d.csv:3: response: is missing or empty" in out
    assert "d.csv:4: response: empty answer" in out


def test_a_clean_spec_passes_with_stats(project, cli):
    code, out, _ = cli("check", write_spec(project, tiny_spec(train={"max_length": 512})))
    assert code == 0, out
    assert "check: 0 errors, 0 warnings" in out and "productos" in out and "median" in out


def test_language_balance_and_all_excluded(project):
    rows = [
        {"prompt": f"Where is my order number {i}?", "completion": "It is on the way and you will have it by Friday.", "topic": "a"}
        for i in range(30)
    ] + [{"prompt": "¿Dónde está mi pedido?", "completion": "Está en camino y lo tendrás el viernes.", "topic": "b"}]
    jsonl(project / "d.jsonl", rows)
    jsonl(project / "eval.jsonl", [chat("q", "a")])
    spec = spec_mod.load(
        spec_file(
            project,
            {
                "en": {"path": "d.jsonl", "where": {"topic": "a"}, "language": "es"},
                "es": {"path": "d.jsonl", "where": {"topic": "b"}, "language": "es", "include": False},
            },
            {"path": "eval.jsonl"},
        )
    )
    report = health.run(spec, data.prepare(spec, collect=True))
    kinds = {(i.kind, i.where) for i in report.issues}
    assert ("language", "slice en") in kinds and ("language", "slice es") not in kinds
    assert ("balance", "slice es") in kinds  # 1 row against 30 cut from the same column
    assert ("near-duplicate", "d.jsonl:2") not in kinds  # different order numbers are different rows
    assert report.slices["en"]["language"] == "es 0%" and report.slices["es"]["language"] == "es 100%"
    spec.data.slices["en"].include = False
    assert [i.message for i in health.run(spec, data.prepare(spec)).errors] == [
        "every slice is excluded or has weight 0 and none is searched; nothing would train"
    ]


def test_sweep_stops_on_fatal_check_before_writing_anything(messy, cli, project):
    code, _, err = cli("sweep", messy, "--no-progress")
    assert code == 2 and "the data has 4 errors (first: train.jsonl:10: messages[0].content:" in err
    assert not (project / "mlruns").exists()


def test_sweep_with_slice_weights_logs_mixture_and_check_report(project, cli):
    rows = [json.loads(line) for line in (TIENDA / "faq.jsonl").read_text(encoding="utf-8").splitlines()]
    jsonl(project / "faq.jsonl", [*rows, rows[0]])  # a planted duplicate: a warning, logged, not fatal
    spec = tiny_spec()
    spec["data"]["slices"]["faq"]["path"] = "faq.jsonl"
    spec["search"]["n_trials"] = 2
    spec["search"]["space"] = {"slices.poesia.weight": {"float": [0.0, 1.0]}, "slices.productos.fraction": {"float": [0.2, 1.0]}}
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    assert "faq.jsonl:121: messages: exact duplicate of faq.jsonl:1" in out  # warnings are printed
    c = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    [parent] = c.search_runs(c.get_experiment_by_name("tiny").experiment_id, "tags.`afina.role` = 'sweep'")
    report = json.loads(Path(c.download_artifacts(parent.info.run_id, "check/report.json", str(project))).read_text())
    assert [i["where"] for i in report["issues"] if i["kind"] == "duplicate"] == ["faq.jsonl:121"]
    assert report["slices"]["faq"]["rows"] == 121 and parent.data.tags["afina.check"].startswith("0 errors")
    trials = c.search_runs(parent.info.experiment_id, "tags.`afina.role` = 'trial'")
    assert len(trials) == 2
    for run in trials:
        p = run.data.params
        weight, fraction = float(p["slices.poesia.weight"]), float(p["slices.productos.fraction"])
        assert int(p["rows.productos"]) < 120 and int(p["rows.faq"]) > 0
        assert int(p["rows.train"]) == sum(int(p[f"rows.{n}"]) for n in ("faq", "productos", "poesia"))
        prepared_slices = {"faq": 121, "productos": round(120 * fraction), "poesia": 80}
        total = sum(prepared_slices.values())
        mass = total - 80 * (1 - weight)
        assert int(p["rows.poesia"]) == max(1, round(total * 80 * weight / mass))
        assert len(p["data.fingerprint"]) == 16 and p["data.slice.faq"] == parent.data.params["data.slice.faq"]
