"""LLM-as-judge against a fake OpenAI-compatible endpoint on 127.0.0.1 and against the tiny local model."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient

from afina.evaluation import judge
from helpers.judges import chat_reply, judge_then_down
from helpers.specs import tiny_spec, write_spec

FAST = {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 48, "eval_steps": 1, "seed": 0}
PROMPTS = [
    {"prompt": "Describe una camiseta básica blanca", "reference": "Una camiseta."},
    "¿Puedo devolver un pedido?",
    "¿Cuánto tarda el envío a Sevilla?",
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7", 7.0),
        ("Score: 8", 8.0),
        ("I'd give it 6/10.", 6.0),
        ("Puntuación: 9,5", 9.5),
        ("**3**", 3.0),
        ("Rating = 10 out of 10", 10.0),
        ("Out of 1-10, this is a 4", 4.0),
        ("42", None),
        ("I like turtles", None),
        ("", None),
        ("score: 0, then 5", 5.0),
    ],
)
def test_parse_score(text, expected):
    assert judge.parse_score(text, 1, 10) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("B.", "B"),
        ("tie", "tie"),
        ("Answer B is better", "B"),
        ("Winner: A", "A"),
        ("Empate", "tie"),
        ("Both are bad", None),
        ("", None),
    ],
)
def test_parse_verdict(text, expected):
    assert judge.parse_verdict(text) == expected


class FakeJudge(BaseHTTPRequestHandler):
    """OpenAI-style /v1/chat/completions: pairwise -> 'A'; otherwise alternates a score with garbage."""

    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        content = body["messages"][0]["content"]
        if "Answer A" in content:
            reply = "A"
        else:
            reply = "Score: 7/10" if len(FakeJudge.seen) % 2 else "I like turtles"
        chat_reply(self, reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    FakeJudge.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_endpoint_judge_drives_a_sweep_and_compare(project, cli, endpoint, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test-123")
    spec = tiny_spec(
        train=FAST,
        samples={"prompts": PROMPTS, "max_new_tokens": 6},
        evaluate={
            "metrics": ["length"],
            "judge": {"url": endpoint, "api_key_env": "JUDGE_KEY", "name": "grader", "rubric": "Friendly and correct?"},
        },
        search={**tiny_spec()["search"], "n_trials": 2, "objective": "judge"},
    )
    path = write_spec(project, spec)
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    c = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    for t in study.trials:  # half the replies are garbage: counted, the others parsed as 7
        assert t.value == 7.0
        m = c.get_run(t.user_attrs["mlflow_run_id"]).data.metrics
        assert m["judge"] == 7.0 and m["judge_unparsed"] in (1.0, 2.0)
    assert study.user_attrs["baseline"]["judge"] == 7.0  # the base model was judged too
    probe, *seen = FakeJudge.seen
    assert probe["body"]["max_tokens"] == 1  # the start-up probe: one token, before any store was written
    assert len(seen) == 3 * 3  # baseline + 2 trials, 3 prompts each
    assert all(s["path"] == "/v1/chat/completions" and s["auth"] == "Bearer sk-test-123" and s["body"]["model"] == "grader" for s in seen)
    assert "Friendly and correct?" in seen[0]["body"]["messages"][0]["content"]
    assert "Reference answer: Una camiseta." in seen[0]["body"]["messages"][0]["content"]

    FakeJudge.seen = []
    code, out, err = cli("compare", path, "--top", "2", "--judge")
    assert code == 0, err
    page = (project / "mlruns" / "reports" / "tiny-compare.html").read_text()
    assert "judge vs base" in page
    # the fake judge always says "A"; the order alternates, so each trial wins where it was shown first
    assert len(FakeJudge.seen) == 2 * 3


def test_judge_down_fails_trials_not_the_sweep(project, cli):
    """A judge that answered the start-up probe and then went away fails the trials it misses, with the reason
    (a judge that does not answer at the start is refused up front: tests/test_bad_input_upfront.py)."""
    with judge_then_down() as port:
        spec = tiny_spec(
            train=FAST,
            evaluate={"judge": {"url": f"http://127.0.0.1:{port}/v1", "timeout": 5}},
            search={**tiny_spec()["search"], "n_trials": 2, "objective": "judge"},
        )
        code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 1 and "error: all 2 trials failed for the same reason" in err and "unreachable" in err, err
    assert "baseline failed" in out and "unreachable" in out
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all("judge endpoint" in t.user_attrs["fail_reason"] and "unreachable" in t.user_attrs["fail_reason"] for t in study.trials)


def test_judge_key_variable_must_be_set(project, cli, monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    spec = tiny_spec(evaluate={"judge": {"url": "http://127.0.0.1:9/v1", "api_key_env": "NO_SUCH_JUDGE_KEY"}})
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 2 and "NO_SUCH_JUDGE_KEY is not set" in err
    spec = tiny_spec(evaluate={"judge": {"url": "http://x", "model": "tiny-random"}})
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 2 and "exactly one of model" in err
    assert not (project / "mlruns").exists()


def scripted_judge(folder: Path) -> Path:
    """A local judge model whose greedy replies are known in advance: "7" to every question, "x" to one that
    holds a "Z". Its weights are set by hand: every token embeds to one direction, the single attention
    head (all-zero queries and keys, so it averages the context) carries the Z direction to a third one, and
    the LM head maps the first direction to "7" and the third to "x". No end-of-text: it repeats until
    max_new_tokens."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from afina import models

    tok = models.load_tokenizer(models.resolve("tiny-random"))
    seven, x, z = (tok.convert_tokens_to_ids(c) for c in "7xZ")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if name.endswith("norm.weight") else 0.0)
        attn = model.model.layers[0].self_attn
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.embed_tokens.weight[z, 1] = 100.0
        attn.v_proj.weight[0, 1] = 1.0
        attn.o_proj.weight[2, 0] = 100.0
        model.lm_head.weight[seven, 0] = 1.0
        model.lm_head.weight[x, 2] = 1.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_local_model_judge_counts_what_it_cannot_parse(tmp_path):
    cfg = SimpleNamespace(url=None, rubric="Be nice.", scale=(1, 10), show_reference=True, max_new_tokens=1)
    cfg.model = str(scripted_judge(tmp_path / "judge"))
    prompts = [{"prompt": "¿Puedo devolver un pedido?", "reference": "Sí."}, {"prompt": "Hola, soy Zoe", "reference": None}]
    scores, raw = judge.score(cfg, prompts, ["Sí, claro.", "¡Hola!"])
    assert raw == ["7", "x"] and scores == [7.0, None]  # a score, and a reply without one (counted, not crashed on)
    cfg.max_new_tokens = 2
    scores, raw = judge.score(cfg, prompts, ["Sí, claro.", "¡Hola!"])
    assert raw == ["77", "xx"] and scores == [None, None]  # 77 lies outside the 1-10 scale


def test_local_model_judge_in_a_sweep(project, cli):
    spec = tiny_spec(
        train=FAST,
        evaluate={"metrics": ["rougeL"], "judge": {"model": str(scripted_judge(project / "judge")), "max_new_tokens": 1}},
        search={**tiny_spec()["search"], "n_trials": 1, "objective": "rougeL"},
    )
    spec["samples"]["prompts"].append("¿Tenéis zapatillas de la talla 42? Zona norte")  # the judge answers "x": unparsed
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    t = study.trials[0]
    assert t.state.name == "COMPLETE", t.user_attrs
    r = t.user_attrs["results"]
    assert r["judge_unparsed"] == 1 and r["judge"] == 7.0, r  # 3 prompts: "7", "7" and one reply without a score
    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")  # absolute: MLflow caches a store per URI
    table = json.loads(Path(c.download_artifacts(t.user_attrs["mlflow_run_id"], "samples.json", str(project))).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [(row["judge_reply"], row["judge"]) for row in rows] == [("7", 7.0), ("7", 7.0), ("x", None)]


class Busy(BaseHTTPRequestHandler):
    """Answers 429 (rate limited) to every other request, then a score: the openai client must retry."""

    calls = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        Busy.calls += 1
        if Busy.calls % 2:
            data, code = b'{"error": {"message": "rate limited"}}', 429
        else:
            data, code = json.dumps({"choices": [{"message": {"role": "assistant", "content": "8"}}]}).encode(), 200
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After-Ms", "10")  # the client waits this long, not its default backoff
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_judge_retries_rate_limits():
    Busy.calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        cfg = SimpleNamespace(url=url, api_key_env=None, name="grader", max_new_tokens=4, timeout=10, rubric="Nice?", scale=(1, 10))
        cfg.show_reference = False
        scores, raw = judge.score(cfg, [{"prompt": "Hola"}, {"prompt": "Adiós"}], ["¡Hola!", "Adiós."])
    finally:
        server.shutdown()
        server.server_close()
    assert scores == [8.0, 8.0] and raw == ["8", "8"]
    assert Busy.calls == 4  # each prompt: one 429, then the retry answered
