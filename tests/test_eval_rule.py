"""An eval set the search cannot move: a split holds rows out only of slices the search does not vary."""

from __future__ import annotations

from afina import data, models
from afina.data import health
from afina.spec import schema as spec_mod
from helpers.specs import TIENDA, tiny_spec, write_spec

SLICES = {n: {"path": str(TIENDA / f"{n}.jsonl")} for n in ("faq", "productos", "poesia")}
POESIA = {"slices.poesia.include": {"categorical": [True, False]}}


def _spec(project, eval_: dict, space: dict, name: str = "spec.yaml"):
    spec = tiny_spec(data={"slices": SLICES, "eval": eval_}, search={"space": space})
    return write_spec(project, spec, name)


def test_split_holds_out_only_unsearched_slices(project):
    spec = spec_mod.load(_spec(project, {"split": 0.1}, POESIA))
    assert spec.eval_slices == ["faq", "productos"]
    prepared = data.prepare(spec)
    origins = {r.origin.split(":")[0] for r in prepared.eval}
    assert origins == {"faq.jsonl", "productos.jsonl"}  # nothing from the searched slice
    assert len(prepared.slices["poesia"]) == 80 and len(prepared.slices["faq"]) == 108  # poesia whole, faq minus 10 %
    report = health.run(spec, prepared)
    assert not [i for i in report.issues if i.kind == "searched-eval"]


def test_every_slice_searched_needs_named_slices_or_a_file(project, cli):
    space = {f"slices.{n}.weight": {"float": [0.1, 1.0]} for n in SLICES}
    code, _, err = cli("check", _spec(project, {"split": 0.1}, space))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "every slice is searched (faq, poesia, productos)" in err and "data.eval.slices" in err and "data.eval.path" in err
    assert not (project / "mlruns").exists()

    named = spec_mod.load(_spec(project, {"split": 0.1, "slices": ["faq", "productos"]}, space, "named.yaml"))
    report = health.run(named, data.prepare(named), models.load_tokenizer(models.resolve("tiny-random")))
    [warn] = [i for i in report.issues if i.kind == "searched-eval"]
    assert warn.level == "warning" and "searched slices faq, productos" in warn.message and "promotion set" in warn.message
    code, _, err = cli("check", project / "named.yaml", "--json", project / "r.json")
    assert code == 0, err
    assert "searched slices faq, productos" in (project / "r.json").read_text(encoding="utf-8")

    filed = spec_mod.load(_spec(project, {"path": str(TIENDA / "eval.jsonl")}, space, "filed.yaml"))
    assert not [i for i in health.run(filed, data.prepare(filed)).issues if i.kind == "searched-eval"]
