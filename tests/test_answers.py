"""Answer-only loss by default: what each row trains on, what the objective and the gate measure.

Real TRL preparation and training of the tiny random model (and one slow SmolLM2 sweep); the gate's
answer_nll is computed from the trials' logged checkpoints.
"""

from __future__ import annotations

import random
import string

import optuna
import pytest

from afina import data, models
from afina.spec import schema as spec_mod
from helpers.specs import jsonl, tiny_spec, write_spec

ANSWER = "vale, gracias"


def _chats(n: int, seed: int) -> list[dict]:
    """Random prompts, always the same short answer: learnable only where the answer is what is scored."""
    rng = random.Random(seed)

    def word() -> str:  # random letters: the prompts stay hard to predict
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(5))

    return [
        {
            "messages": [
                {"role": "user", "content": " ".join(word() for _ in range(8))},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for _ in range(n)
    ]


def _labelled(tok, ids: list[int], labels: list[int]) -> str:
    return tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])


def test_labels_mask_prompts_keep_text_rows_whole_and_the_cache_keys_on_the_setting(project, afina_cache):
    from trl import SFTConfig

    multi = [
        {"role": "system", "content": "Eres la tienda."},
        {"role": "user", "content": "hola"},
        {"role": "assistant", "content": "primera respuesta"},
        {"role": "user", "content": "¿y el envío?"},
        {"role": "assistant", "content": "segunda respuesta"},
    ]
    jsonl(project / "chats.jsonl", [{"messages": multi}])
    jsonl(project / "pairs.jsonl", [{"prompt": "¿tenéis tallas?", "completion": "Sí, de la XS a la XXL."}])
    jsonl(project / "style.jsonl", [{"text": "El mar guarda cada palabra."}])
    jsonl(project / "eval.jsonl", _chats(2, 1))
    spec = spec_mod.load(
        write_spec(
            project,
            tiny_spec(
                data={
                    "slices": {
                        "chats": {"path": "chats.jsonl"},
                        "pairs": {"path": "pairs.jsonl"},
                        "style": {"path": "style.jsonl", "system": "Escribe bonito."},
                    },
                    "eval": {"path": "eval.jsonl"},
                },
                search={"space": {"train.learning_rate": {"float": [1e-4, 1e-2], "log": True}}},
            ),
        )
    )
    prepared = data.prepare(spec)
    tok = models.load_tokenizer(models.resolve("tiny-random"))
    cache = afina_cache / "tokens-answers-test"
    tables = {}
    for flag in (None, False):
        args = SFTConfig(output_dir=str(project / "o"), report_to="none", use_cpu=True, max_length=256, completion_only_loss=flag)
        tables[flag] = data.tokenized(prepared, tok, "tiny", args, cache)
    [chat], [pair] = prepared.slices["chats"], prepared.slices["pairs"]
    [style] = prepared.slices["style"]

    answers = tables[None]
    # only the last answer (and its end-of-turn) is trained; the earlier answer is context
    assert _labelled(tok, *answers[chat.key]) == "segunda respuesta<|im_end|>\n"
    assert _labelled(tok, *answers[pair.key]) == "Sí, de la XS a la XXL.<|im_end|>\n"
    ids, labels = answers[style.key]  # a text row answers nothing: every token, the system prompt too
    assert labels == ids and "Escribe bonito." in tok.decode(ids)
    for row in (chat, pair, style):  # all-token loss: labels are the inputs, and the sequence is the same chat
        ids, labels = tables[False][row.key]
        assert labels == ids == tok(tok.apply_chat_template(row.messages, tokenize=False), add_special_tokens=False)["input_ids"]
        assert answers[row.key][0] == ids
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2  # one cache entry per setting

    from afina.evaluation import answer_loss

    assert data.answer(style.messages) is None and data.answer(chat.messages) == (multi[:-1], multi[-1:])
    seq, start = answer_loss._encode(tok, chat.messages)  # the gate scores the tokens the loss covers
    assert seq[start:] == [i for i, lab in zip(*answers[chat.key], strict=True) if lab != -100]


@pytest.mark.parametrize(("completion_only_loss", "low"), [(None, True), (False, False)])
def test_a_fixed_answer_behind_random_prompts_is_learned_and_the_gate_agrees(project, cli, completion_only_loss, low):
    jsonl(project / "train.jsonl", _chats(160, 0))
    jsonl(project / "eval.jsonl", _chats(16, 1))
    spec = tiny_spec(
        model={"ref": "tiny-random", "method": "full"},
        data={"slices": {"fixed": {"path": "train.jsonl"}}, "eval": {"path": "eval.jsonl"}},
        train={"max_steps": 40, "per_device_train_batch_size": 8, "max_length": 128, "eval_steps": 20, "seed": 0}
        | ({} if completion_only_loss is None else {"completion_only_loss": completion_only_loss}),
        search={"n_trials": 1, "space": {"train.learning_rate": {"categorical": [3e-2]}}},
        samples={"prompts": []},
    )
    path = write_spec(project, spec)
    code, _, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db")
    [trial] = study.get_trials()
    base = study.user_attrs["baseline"]["eval_loss"]
    if low:
        assert trial.value < 0.3 < base  # the answer is learnable, and it is all the objective measures
    else:
        assert trial.value > 2.0  # the random prompts dominate an all-token objective

    # the gate's score of the same checkpoint on the same rows agrees with the objective
    from afina import tracking
    from afina.commands import compare
    from afina.evaluation import answer_loss

    loaded = spec_mod.load(path)
    c = tracking.client(loaded.tracking.mlflow_uri)
    model, tok = compare._load(loaded, c, "trial 0", trial.user_attrs["mlflow_run_id"])
    score = answer_loss.METRICS[answer_loss.metric(loaded)][0](model, tok, data.prepare(loaded).eval)
    assert answer_loss.metric(loaded) == ("answer_nll" if low else "token_nll")
    assert score == pytest.approx(trial.value, rel=0.02)


@pytest.mark.slow
def test_smollm2_objective_and_gate_measure_the_same_answers(project, cli, tmp_path):
    """SmolLM2 with its own chat template (a default system prompt is injected): the trial's eval loss
    and promote's answer_nll of its checkpoint agree, and both are answer-only."""
    spec = tiny_spec(
        name="smol",
        model={"ref": "smollm2-135m", "method": "lora"},
        data={**tiny_spec()["data"], "eval": {**tiny_spec()["data"]["eval"], "max_rows": 4}},
        train={"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 160, "eval_steps": 2, "per_device_eval_batch_size": 4},
        search={"n_trials": 1, "space": {"train.learning_rate": {"categorical": [5e-4]}}},
        samples={"prompts": []},
    )
    path = write_spec(project, spec)
    code, _, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    [trial] = optuna.load_study(study_name="smol", storage="sqlite:///mlruns/optuna.db").get_trials()
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")

    from afina import tracking
    from afina.commands import compare
    from afina.evaluation import answer_loss

    loaded = spec_mod.load(path)
    model, tok = compare._load(loaded, tracking.client(loaded.tracking.mlflow_uri), "trial 0", trial.user_attrs["mlflow_run_id"])
    rows = data.prepare(loaded).eval
    answers = answer_loss.answer_nll(model, tok, rows, batch_size=4)
    everything = answer_loss.token_nll(model, tok, rows, batch_size=4)
    assert answers == pytest.approx(trial.value, rel=0.03)
    assert abs(everything - trial.value) > 0.1  # what the objective used to be: a different number
