"""Model checkpoints in three formats, and conversion between them.

- camelid:      `config.json` ({"format": "camelid", "model_args": {...}}) + `model.safetensors`.
- Hugging Face: `config.json` (LlamaConfig) + `model.safetensors`, a sharded safetensors index, or
                `pytorch_model.bin` (sharded too). q/k rows are permuted to HF's half-split rotary layout.
- Meta:         `params.json` + `consolidated.NN.pth`, one file per model-parallel rank, split as
                Meta's fairscale layers split them (see META_SPLIT_DIM).

Every load reads and checks all tensors before a model is built, so a bad file never leaves a
half-loaded model behind; errors name the file and the tensor. A `tokenizer.model` beside the weights
travels with them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from camelid.errors import CamelidError
from camelid.fsutil import atomic_dir
from camelid.model import ModelArgs, Transformer
from camelid.reward_model import RewardModel


class CheckpointError(CamelidError, ValueError):
    pass


CAMELID_FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.model"

# Meta's model-parallel split dimension per parameter (None: replicated on every rank).
# ParallelEmbedding splits the embedding dim; ColumnParallelLinear splits outputs (dim 0);
# RowParallelLinear splits inputs (dim 1).
def meta_split_dim(name: str) -> int | None:
    if name == "tok_embeddings.weight":
        return 1
    if name == "output.weight" or name.endswith(("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight")):
        return 0
    if name.endswith(("wo.weight", "w2.weight")):
        return 1
    return None  # norms


# Tensors some real checkpoints carry that are not parameters (recomputed from the config).
IGNORED_KEYS = re.compile(r"(^rope\.freqs$|rotary_emb\.inv_freq$)")

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


# ---------------------------------------------------------------------------------------------- reading files

def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        out = {}
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
        return out
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{file}: cannot read safetensors file ({type(e).__name__}: {e}); "
                              f"it is truncated or corrupted — re-download or re-save it") from None


def _read_torch(file: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read PyTorch checkpoint ({type(e).__name__}: {e}); "
                              f"it is truncated, corrupted, or holds more than plain tensors") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{file}: expected a dict of tensors (a state dict)")
    return sd


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.exists():
        raise CheckpointError(f"{file}: file not found")
    return _read_safetensors(file) if file.suffix == ".safetensors" else _read_torch(file)


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: file not found") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _model_args(file: Path, **kwargs) -> ModelArgs:
    try:
        return ModelArgs(**kwargs)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: {e}") from None


# ------------------------------------------------------------------------------------------ format detection

def detect_format(path: Path) -> str:
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    if (path / "config.json").exists():
        cfg = _read_json(path / "config.json")
        return "camelid" if cfg.get("format") == "camelid" else "hf"
    if (path / "params.json").exists():
        return "meta"
    raise CheckpointError(f"{path}: no config.json (camelid / Hugging Face) or params.json (Meta) found")


# ------------------------------------------------------------------------------------------- camelid format

def _load_camelid(path: Path):
    cfg = _read_json(path / "config.json")
    if cfg.get("version", 1) > CAMELID_FORMAT_VERSION:
        raise CheckpointError(f"{path / 'config.json'}: written by a newer camelid (format version {cfg['version']})")
    try:
        args = ModelArgs.from_dict(cfg["model_args"])
    except KeyError:
        raise CheckpointError(f"{path / 'config.json'}: missing key 'model_args'") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    file = path / "model.safetensors"
    sd = _read_weights(file)
    info = {"kind": cfg.get("kind", "lm"), "calibration": cfg.get("calibration")}
    return args, sd, {k: file for k in sd}, info


def _save_camelid(sd, args: ModelArgs, out: Path, info: dict) -> None:
    from safetensors.torch import save_file

    cfg = {"format": "camelid", "version": CAMELID_FORMAT_VERSION, "kind": info.get("kind", "lm"),
           "model_args": args.to_dict()}
    if info.get("calibration"):
        cfg["calibration"] = info["calibration"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------- Hugging Face format

HF_NAMES = [  # (camelid/Meta name pattern, Hugging Face name pattern)
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("reward_head.weight", "score.weight"),  # LlamaForSequenceClassification with num_labels=1
    ("layers.{}.attention.wq.weight", "model.layers.{}.self_attn.q_proj.weight"),
    ("layers.{}.attention.wk.weight", "model.layers.{}.self_attn.k_proj.weight"),
    ("layers.{}.attention.wv.weight", "model.layers.{}.self_attn.v_proj.weight"),
    ("layers.{}.attention.wo.weight", "model.layers.{}.self_attn.o_proj.weight"),
    ("layers.{}.feed_forward.w1.weight", "model.layers.{}.mlp.gate_proj.weight"),
    ("layers.{}.feed_forward.w2.weight", "model.layers.{}.mlp.down_proj.weight"),
    ("layers.{}.feed_forward.w3.weight", "model.layers.{}.mlp.up_proj.weight"),
    ("layers.{}.attention_norm.weight", "model.layers.{}.input_layernorm.weight"),
    ("layers.{}.ffn_norm.weight", "model.layers.{}.post_attention_layernorm.weight"),
]
_TO_HF = [(re.compile("^" + re.escape(c).replace(r"\{\}", r"(\d+)") + "$"), h) for c, h in HF_NAMES]
_FROM_HF = [(re.compile("^" + re.escape(h).replace(r"\{\}", r"(\d+)") + "$"), c) for c, h in HF_NAMES]


def _rename(name: str, table) -> str | None:
    for pattern, target in table:
        m = pattern.match(name)
        if m:
            return target.format(*m.groups())
    return None


def rotary_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved rotary pairs -> HF's rotate-half layout (rows of wq or wk)."""
    out, dim = w.shape
    return w.view(n_heads, out // n_heads // 2, 2, dim).transpose(1, 2).reshape(out, dim)


def rotary_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    out, dim = w.shape
    return w.view(n_heads, 2, out // n_heads // 2, dim).transpose(1, 2).reshape(out, dim)


def to_hf_state_dict(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in sd.items():
        if name.endswith("wq.weight"):
            t = rotary_to_hf(t, args.n_heads)
        elif name.endswith("wk.weight"):
            t = rotary_to_hf(t, args.kv_heads)
        out[_rename(name, _TO_HF)] = t
    return out


def _hf_args(file: Path, cfg: dict) -> ModelArgs:
    def refuse(why: str):
        raise CheckpointError(f"{file}: unsupported checkpoint: {why}")

    if cfg.get("model_type", "llama") != "llama":
        refuse(f"model_type is {cfg.get('model_type')!r}; camelid reads Llama (LLaMA-1 / Llama-2) models only")
    rope = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"}
                                          if rope.get("rope_type", "default") != "default" else None)
    vocab = cfg.get("vocab_size")
    if (vocab or 0) >= 128000 or cfg.get("bos_token_id") == 128000 or (scaling or {}).get("rope_type") == "llama3":
        refuse("this looks like a Llama-3 checkpoint (128k vocabulary / llama3 rope); camelid supports LLaMA-1 and "
               "Llama-2 architectures only")
    if scaling:
        refuse(f"rope scaling {scaling} is not implemented (camelid uses plain rotary embeddings)")
    if cfg.get("tie_word_embeddings", False):
        refuse("tie_word_embeddings is true; LLaMA unties the input embedding and the output projection")
    if cfg.get("attention_bias", False) or cfg.get("mlp_bias", False):
        refuse("attention_bias / mlp_bias is true; LLaMA has no biases")
    if cfg.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act is {cfg['hidden_act']!r}; LLaMA's SwiGLU uses silu")
    try:
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        if hidden % heads == 0 and cfg.get("head_dim") not in (None, hidden // heads):
            refuse(f"head_dim {cfg['head_dim']} differs from hidden_size / num_attention_heads")
        return _model_args(file, dim=hidden, n_layers=cfg["num_hidden_layers"], n_heads=heads,
                           n_kv_heads=cfg.get("num_key_value_heads", heads), vocab_size=vocab,
                           ffn_hidden_dim=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-6),
                           rope_theta=float(theta), max_seq_len=cfg.get("max_position_embeddings", 2048))
    except KeyError as e:
        raise CheckpointError(f"{file}: missing key {e.args[0]!r}") from None


def _load_hf(path: Path):
    cfg = _read_json(path / "config.json")
    args = _hf_args(path / "config.json", cfg)
    kind = "reward" if "LlamaForSequenceClassification" in (cfg.get("architectures") or []) else "lm"
    if kind == "reward" and cfg.get("num_labels", len(cfg.get("id2label") or {0: 0})) != 1:
        raise CheckpointError(f"{path / 'config.json'}: a sequence classifier with more than one label is not a "
                              f"reward model")
    files: list[Path]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: missing 'weight_map'")
            files = [path / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise CheckpointError(f"{index}: names shard file(s) that do not exist: {', '.join(missing)}")
            break
    else:
        files = [f for f in (path / "model.safetensors", path / "pytorch_model.bin") if f.exists()][:1]
        if not files:
            raise CheckpointError(f"{path}: no model.safetensors, pytorch_model.bin or shard index found")
    sd, origin = {}, {}
    for file in files:
        for name, t in _read_weights(file).items():
            if IGNORED_KEYS.search(name):
                continue
            ours = _rename(name, _FROM_HF)
            if ours is None:
                raise CheckpointError(f"{file}: unexpected tensor {name!r} (not part of a Llama model)")
            if ours.endswith(("wq.weight", "wk.weight")):
                heads = args.n_heads if ours.endswith("wq.weight") else args.kv_heads
                expected = heads * args.head_dim
                if t.dim() != 2 or t.shape[0] != expected or t.shape[0] % (2 * heads):
                    raise CheckpointError(f"{file}: tensor {name!r} has shape {list(t.shape)}, "
                                          f"expected [{expected}, {args.dim}] from config.json")
                t = rotary_from_hf(t, heads)
            sd[ours], origin[ours] = t, file
    return args, sd, origin, {"kind": kind, "calibration": cfg.get("camelid_calibration")}


def _hf_config(args: ModelArgs, dtype: torch.dtype, info: dict) -> dict:
    dtype_name = str(dtype).removeprefix("torch.")
    reward = info.get("kind") == "reward"
    extra = {"num_labels": 1, "id2label": {"0": "reward"}, "label2id": {"reward": 0},
             "camelid_calibration": info.get("calibration")} if reward else {}
    return {
        "architectures": ["LlamaForSequenceClassification" if reward else "LlamaForCausalLM"], "model_type": "llama",
        **extra,
        "hidden_size": args.dim, "intermediate_size": args.hidden_dim, "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads, "num_key_value_heads": args.kv_heads, "head_dim": args.head_dim,
        "vocab_size": args.vocab_size, "max_position_embeddings": args.max_seq_len, "rms_norm_eps": args.norm_eps,
        # Both spellings: transformers < 5 reads rope_theta/rope_scaling, >= 5 reads rope_parameters.
        "rope_theta": args.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_theta": args.rope_theta, "rope_type": "default"},
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": False, "pretraining_tp": 1, "initializer_range": 0.02, "use_cache": True,
        # A sequence classifier finds each row's last token through pad_token_id (0, <unk>, is never generated).
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0 if reward else None,
        "torch_dtype": dtype_name, "dtype": dtype_name,
    }


def to_hf_model(state_dict: dict, args: ModelArgs, **config):
    """transformers' `LlamaForCausalLM` holding these camelid weights (the peer in side-by-side benchmarks),
    configured as a Hugging Face export would be; `config` overrides fields (attn_implementation, ...)."""
    import transformers

    cfg = transformers.LlamaConfig.from_dict({**_hf_config(args, torch.float32, {}), **config})
    hf = transformers.LlamaForCausalLM(cfg)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(state_dict, args), strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise CheckpointError(f"transformers' Llama does not take these weights: missing {missing}, "
                              f"unexpected {unexpected}")
    return hf


def _save_hf(sd, args: ModelArgs, out: Path, max_shard_bytes: int, info: dict) -> None:
    from safetensors.torch import save_file

    hf = to_hf_state_dict(sd, args)
    dtype = next(iter(sd.values())).dtype
    (out / "config.json").write_text(json.dumps(_hf_config(args, dtype, info), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": True,
        "temperature": 0.6, "top_p": 0.9, "max_length": args.max_seq_len}, indent=2) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in hf.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in hf.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def _save_hf_tokenizer(out: Path, args: ModelArgs) -> None:
    tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", **tokens, "pad_token": None, "add_bos_token": True,
        "add_eos_token": False, "legacy": True, "clean_up_tokenization_spaces": False,
        "model_max_length": args.max_seq_len, "sp_model_kwargs": {}, "chat_template": LLAMA2_CHAT_TEMPLATE,
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")


# --------------------------------------------------------------------------------------------- Meta format

def _meta_args(file: Path, params: dict, sd: dict[str, torch.Tensor]) -> ModelArgs:
    if params.get("use_scaled_rope") or params.get("vocab_size") == 128256 or params.get("rope_theta") == 500000:
        raise CheckpointError(f"{file}: unsupported checkpoint: this looks like Llama-3 (scaled rope / 128k vocabulary); "
                              f"camelid supports LLaMA-1 and Llama-2 architectures only")
    known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
             "norm_eps", "rope_theta", "max_seq_len", "max_batch_size"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise CheckpointError(f"{file}: unknown keys {unknown}")
    kw = {k: v for k, v in params.items() if k != "max_batch_size"}
    # Meta ships vocab_size -1 (its code takes it from the tokenizer); the embedding's shape has it too.
    if kw.get("vocab_size", -1) in (-1, None):
        if "output.weight" not in sd:
            raise CheckpointError(f"{file}: vocab_size is -1 and there is no output.weight to read it from")
        kw["vocab_size"] = sd["output.weight"].shape[0]
    # params.json carries no context length: LLaMA-1 (eps 1e-6) used 2,048, Llama-2 4,096.
    kw.setdefault("max_seq_len", 2048 if kw.get("norm_eps", 1e-5) <= 1e-6 else 4096)
    return _model_args(file, **kw)


def _load_meta(path: Path):
    params_file = path / "params.json"
    params = _read_json(params_file)
    files = sorted(path.glob("consolidated.*.pth"))
    if not files:
        raise CheckpointError(f"{path}: params.json found but no consolidated.NN.pth weight files")
    numbers = [int(f.name.split(".")[1]) for f in files]
    if numbers != list(range(len(files))):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        raise CheckpointError(f"{path}: model-parallel shards are not consecutive; missing "
                              + ", ".join(f"consolidated.{n:02d}.pth" for n in missing))
    shards = [_read_weights(f) for f in files]
    keys = [k for k in shards[0] if not IGNORED_KEYS.search(k)]
    sd, origin = {}, {}
    for i, shard in enumerate(shards[1:], start=1):
        if {k for k in shard if not IGNORED_KEYS.search(k)} != set(keys):
            raise CheckpointError(f"{files[i]}: holds different tensors from {files[0].name}")
    for key in keys:
        dim = meta_split_dim(key)
        parts = [s[key] for s in shards]
        sd[key] = parts[0] if dim is None or len(parts) == 1 else _cat(parts, dim, key, files)
        origin[key] = files[0] if len(files) == 1 else path / "consolidated.*.pth"
    args = _meta_args(params_file, params, sd)
    return args, sd, origin, {"kind": "lm"}


def _cat(parts, dim, key, files):
    try:
        return torch.cat(parts, dim=dim)
    except RuntimeError:
        shapes = ", ".join(f"{f.name}: {list(p.shape)}" for f, p in zip(files, parts))
        raise CheckpointError(f"tensor {key!r} cannot be merged across model-parallel shards ({shapes})") from None


def meta_params(args: ModelArgs) -> dict:
    """params.json that Meta's reference code accepts and that rebuilds exactly this FFN size."""
    p = {"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads}
    if args.kv_heads != args.n_heads:
        p["n_kv_heads"] = args.kv_heads
    p.update(vocab_size=args.vocab_size, norm_eps=args.norm_eps)
    if args.rope_theta != 10000.0:
        p["rope_theta"] = args.rope_theta
    rule = ModelArgs(**{**args.to_dict(), "ffn_hidden_dim": None})
    if rule.hidden_dim == args.hidden_dim:
        p["multiple_of"] = args.multiple_of
        if args.ffn_dim_multiplier is not None:
            p["ffn_dim_multiplier"] = args.ffn_dim_multiplier
    else:
        # An arbitrary hidden size (from a Hugging Face config) through Meta's rule: round up to a
        # multiple of the size itself, after shrinking int(8d/3) below it if it is larger.
        target, base = args.hidden_dim, int(2 * 4 * args.dim / 3)
        p["multiple_of"] = target
        if base > target:
            p["ffn_dim_multiplier"] = target / base
    return p


def _save_meta(sd, args: ModelArgs, out: Path, shards: int) -> None:
    (out / "params.json").write_text(json.dumps(meta_params(args)) + "\n")
    for name, t in sd.items():
        dim = meta_split_dim(name)
        if dim is not None and t.shape[dim] % shards:
            raise CheckpointError(f"cannot split {name!r} {list(t.shape)} into {shards} model-parallel shards")
    for rank in range(shards):
        part = {}
        for name, t in sd.items():
            dim = meta_split_dim(name)
            part[name] = t if dim is None else t.chunk(shards, dim=dim)[rank]
            part[name] = part[name].clone().contiguous()  # own storage: torch.save would write the whole tensor
        torch.save(part, out / f"consolidated.{rank:02d}.pth")


# ------------------------------------------------------------------------------------------------- public API

def model_class(kind: str):
    if kind == "reward":
        return RewardModel
    return Transformer


def load_state_dict(path: str | os.PathLike) -> tuple[ModelArgs, dict[str, torch.Tensor], dict]:
    """Read a checkpoint of any format into (ModelArgs, state dict with camelid/Meta names, info), fully
    checked. info: {"kind": "lm" | "reward", "calibration": ...}."""
    path = Path(path)
    fmt = detect_format(path)
    args, sd, origin, info = {"camelid": _load_camelid, "hf": _load_hf, "meta": _load_meta}[fmt](path)
    sd = {k: v for k, v in sd.items() if not IGNORED_KEYS.search(k)}
    with torch.device("meta"):
        expected = {k: v.shape for k, v in model_class(info["kind"])(args).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: missing tensors {missing[:5]}{more} (format: {fmt})")
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        raise CheckpointError(f"{origin[unexpected[0]]}: unexpected tensor(s) {unexpected[:5]} for this config")
    for name, shape in expected.items():
        if sd[name].shape != shape:
            raise CheckpointError(f"{origin[name]}: tensor {name!r} has shape {list(sd[name].shape)}, "
                                  f"expected {list(shape)} from the checkpoint's config")
        if not sd[name].is_floating_point():
            raise CheckpointError(f"{origin[name]}: tensor {name!r} has dtype {sd[name].dtype}, expected floating point")
    return args, sd, info


def check_vocab(tokenizer, model, model_path) -> None:
    """A model samples ids up to its vocabulary size and its tokenizer must turn every one into text (and
    give no id the model lacks): the two sizes must be equal wherever they meet."""
    if tokenizer.vocab_size != model.args.vocab_size:
        raise CheckpointError(f"{tokenizer.model_path} has {tokenizer.vocab_size} pieces but the model in "
                              f"{model_path} has a vocabulary of {model.args.vocab_size}: they do not belong "
                              f"together (use the model's own tokenizer.model)")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and what came with it, in one typed object."""
    model: Transformer  # a RewardModel when kind == "reward"
    path: Path
    format: str  # camelid | hf | meta
    kind: str  # lm | reward
    tokenizer_path: Path | None  # the tokenizer.model beside the weights, if there is one

    def tokenizer(self):
        """The checkpoint's tokenizer, checked against the model's vocabulary."""
        from camelid.tokenizer import Tokenizer

        if self.tokenizer_path is None:
            raise CheckpointError(f"{self.path}: no {TOKENIZER_FILE} beside the weights")
        tok = Tokenizer(self.tokenizer_path)
        check_vocab(tok, self.model, self.path)
        return tok

    def save(self, path: str | os.PathLike, format: str = "camelid", **kw) -> Path:
        """`save_model` with the tokenizer carried along."""
        return save_model(self.model, path, format, tokenizer_path=self.tokenizer_path, **kw)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> Checkpoint:
    """Load a camelid, Hugging Face or Meta checkpoint directory: the `Transformer` (or `RewardModel`, when
    the checkpoint is one) with its format, kind and tokenizer.

    dtype None keeps the stored precision. The model is built on the meta device and takes the loaded
    tensors as its parameters, so no memory is spent on a throwaway initialisation.
    """
    path = Path(path)
    args, sd, info = load_state_dict(path)
    sd = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in sd.items()}
    with torch.device("meta"):
        model = model_class(info["kind"])(args)
    model.load_state_dict(sd, strict=True, assign=True)
    if info.get("calibration"):
        model.calibration = dict(info["calibration"])
    tok = path / TOKENIZER_FILE
    return Checkpoint(model.eval(), path, detect_format(path), info["kind"], tok if tok.exists() else None)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> Transformer:
    """The model of `load_checkpoint(path, device, dtype)`, for when nothing else of the checkpoint is needed."""
    return load_checkpoint(path, device, dtype).model


def save_model(model: Transformer, path: str | os.PathLike, format: str = "camelid",
               tokenizer_path: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
               shards: int = 1, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` (a Transformer or RewardModel) to directory `path` atomically (the old content stays
    until the new one is complete).

    format: "camelid", "hf" (loads in `transformers.LlamaForCausalLM.from_pretrained`, or
    LlamaForSequenceClassification for a reward model) or "meta" (`shards` model-parallel files). The
    tokenizer (`tokenizer_path`) is copied beside the weights.
    """
    if format not in ("camelid", "hf", "meta"):
        raise CheckpointError(f"unknown checkpoint format {format!r}; use camelid, hf or meta")
    sd = {k: v.detach().to("cpu", dtype=dtype or v.dtype) for k, v in _plain_state_dict(model).items()}
    info = {"kind": getattr(model, "kind", "lm"), "calibration": getattr(model, "calibration", None)}
    return save_state_dict(sd, model.args, path, format, tokenizer_path,
                           shards=shards, max_shard_bytes=max_shard_bytes, info=info)


def save_state_dict(sd, args: ModelArgs, path, format="camelid", tokenizer_path=None, shards=1,
                    max_shard_bytes=5 * 2**30, info: dict | None = None) -> Path:
    path = Path(path)
    info = info or {"kind": "reward" if "reward_head.weight" in sd else "lm"}
    if format == "meta" and info.get("kind") == "reward":
        raise CheckpointError("Meta's format has no reward models; save as camelid or hf")
    with atomic_dir(path) as tmp:
        if format == "camelid":
            _save_camelid(sd, args, tmp, info)
        elif format == "hf":
            _save_hf(sd, args, tmp, max_shard_bytes, info)
        else:
            _save_meta(sd, args, tmp, shards)
        if tokenizer_path:
            shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
            if format == "hf":
                _save_hf_tokenizer(tmp, args)
    return path


def plain_names(sd: dict) -> dict:
    """Names without wrapper prefixes (torch.compile's `_orig_mod.`, activation checkpointing's)."""
    return {k.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", ""): v for k, v in sd.items()}


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in plain_names(model.state_dict()).items()}


def convert(src, dst, to: str, dtype: torch.dtype | None = None, shards: int = 1) -> Path:
    args, sd, info = load_state_dict(src)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    tok = Path(src) / TOKENIZER_FILE
    return save_state_dict(sd, args, dst, to, tok if tok.exists() else None, shards=shards, info=info)
