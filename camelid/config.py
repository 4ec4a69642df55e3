"""Run configuration: dataclasses, TOML recipe files, `--set section.key=value` overrides, validation.

Every stage (pretrain, sft, rm, rs, ppo) shares the `train`, `log` and `checkpoint` sections; a stage
adds its own section. Unknown keys and wrong types are refused with the key's full name.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from camelid.errors import CamelidError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(CamelidError, ValueError):
    pass


@dataclass
class ModelConfig:
    preset: str = "tiny"  # a name from camelid.model.PRESETS; the fields below override it
    init_from: str = ""  # a checkpoint directory to start from instead of fresh weights
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    vocab_size: int | None = None  # default: the tokenizer's
    multiple_of: int | None = None
    ffn_dim_multiplier: float | None = None
    ffn_hidden_dim: int | None = None
    norm_eps: float | None = None
    rope_theta: float | None = None
    max_seq_len: int | None = None


@dataclass
class DataConfig:
    dir: str = ""  # a prepared data directory (`camelid data prepare`); empty: prepare the embedded corpus
    tokenizer: str = ""  # tokenizer.model; empty: the one in `dir`
    seq_len: int = 256
    weights: dict = field(default_factory=dict)  # source -> sampling weight; empty: the mixture's own
    seed: int = 0


@dataclass
class TrainConfig:
    batch_tokens: int = 16384  # global tokens per optimizer step (LLaMA: 4M); accumulation makes up the rest
    micro_batch: int = 8  # sequences per forward/backward on one rank
    max_steps: int = 0  # 0: derived from max_tokens
    max_tokens: int = 0
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to 10% of the peak
    warmup_steps: int = 2000
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-5
    grad_clip: float = 1.0
    dtype: str = "bf16"  # autocast precision: bf16 | fp16 | fp32 (master weights stay fp32)
    compile: bool = False  # torch.compile each block and the loss (tens of seconds to compile on a CPU; then 1.3-1.4x in bf16)
    activation_checkpointing: str = "none"  # none | selective | full
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_bad_steps: int = 3  # consecutive NaN/Inf losses tolerated (skipped) before the run stops
    tp: int = 1  # tensor-parallel degree (distributed runs)
    dp_shard: int = -1  # FSDP shard degree; -1: all ranks not used by TP
    loss_parallel: bool = False  # with tp > 1: cross-entropy on vocabulary-sharded logits (no all-gather)


@dataclass
class LogConfig:
    every: int = 10
    val_every: int = 0  # 0: only at the end
    val_batches: int = 4
    tensorboard: bool = False
    progress: bool = True
    profile_steps: int = 0  # > 0: torch.profiler trace (+ CUDA memory snapshot) of this many steps into RUN_DIR/profile


@dataclass
class CheckpointConfig:
    every: int = 0  # 0: only at the end
    keep: int = 2


@dataclass
class StageConfig:
    """What every stage shares; a stage's config adds its own section (data, sft, rm, rs, ppo)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return to_toml(self.to_dict())

    def check(self) -> None:
        """A stage's own consistency checks (raise ConfigError naming the key); run after every build."""


@dataclass
class Config(StageConfig):
    """Pre-training."""
    data: DataConfig = field(default_factory=DataConfig)


# ----------------------------------------------------------------------------------------- build & check

def _check_type(key: str, value, tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        return _check_type(key, value, tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is dict and not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table, got {value!r}")
    return value


def from_dict(cls, d: dict, prefix: str = "", base=None):
    """Build dataclass `cls` from nested dicts, refusing unknown keys and wrong types by full key name.

    Keys not in `d` keep their values in `base` (default: `cls()`), so a stage's own defaults (a field's
    default_factory, e.g. SFT's learning rate in its `train` section) survive a recipe that sets other keys."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {d!r}")
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        full = prefix + key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {prefix + close[0]}?" if close else f"; known keys: {', '.join(sorted(names))}"
            raise ConfigError(f"{full}: unknown key{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, full + ".", base=getattr(base, key))
        else:
            kwargs[key] = _check_type(full, value, tp)
    return dataclasses.replace(base, **kwargs)


def replace_keys(cfg, values: dict):
    """A copy of dataclass `cfg` with dotted keys set ({"model.init_from": path}), checked as a recipe is."""
    d: dict = {}
    for key, value in values.items():
        node = d
        *sections, last = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    return from_dict(type(cfg), d, base=cfg)


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string: --set data.dir=runs/x


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings applied onto nested dict `d` (values parsed as TOML, else strings)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
        node[parts[-1]] = _parse_value(text.strip())
    return d


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=Config):
    """cls's own defaults < the TOML file < --set overrides. A file may `inherit = "other.toml"`."""
    d = _load_with_inherit(resolve_config_path(path)) if path else {}
    d = apply_overrides(d, overrides or [])
    cfg = from_dict(cls, d)
    validate(cfg)
    return cfg


def _load_with_inherit(path: Path, seen=()) -> dict:
    d = load_toml(path)
    parent = d.pop("inherit", None)
    if parent:
        parent_path = resolve_config_path(parent, relative_to=path.parent)
        if parent_path in seen:
            raise ConfigError(f"{path}: inherit loop through {parent_path}")
        d = _deep_merge(_load_with_inherit(parent_path, seen + (parent_path,)), d)
    return d


# Shipped recipes are package data (camelid/configs/), found the same way from a checkout, an editable
# install or a wheel, whatever the working directory.
CONFIG_DIR = Path(str(resources.files("camelid") / "configs"))


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config file path, or the name of a shipped recipe (`quickstart`, `llama2-7b`, ...)."""
    p = Path(name)
    for candidate in (p, (relative_to or Path.cwd()) / p, CONFIG_DIR / p, CONFIG_DIR / f"{name}.toml"):
        if candidate.is_file():
            return candidate.resolve()
    shipped = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.toml")))
    raise ConfigError(f"{name}: no such config file, and not a shipped recipe ({shipped})")


def validate(cfg) -> None:
    t = getattr(cfg, "train", None)
    if t is not None:
        def need(ok, key, msg):
            if not ok:
                raise ConfigError(f"{key}: {msg}")

        need(t.dtype in ("bf16", "fp16", "fp32"), "train.dtype", f"must be bf16, fp16 or fp32, got {t.dtype!r}")
        need(t.activation_checkpointing in ("none", "selective", "full"), "train.activation_checkpointing",
             f"must be none, selective or full, got {t.activation_checkpointing!r}")
        need(t.schedule in ("cosine", "constant"), "train.schedule", f"must be cosine or constant, got {t.schedule!r}")
        need(t.lr > 0, "train.lr", "must be positive")
        need(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be within [0, 1]")
        need(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        need(t.micro_batch > 0, "train.micro_batch", "must be positive")
        need(t.batch_tokens > 0, "train.batch_tokens", "must be positive")
        need(t.max_steps >= 0 and t.max_tokens >= 0, "train.max_steps", "must be >= 0")
        need(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1", "betas must be within [0, 1)")
        need(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
    log = getattr(cfg, "log", None)
    if log is not None:
        if not (isinstance(log.every, int) and log.every >= 1):
            raise ConfigError(f"log.every: must be a positive number of steps, got {log.every!r}")
        if log.val_every < 0:
            raise ConfigError(f"log.val_every: must be >= 0 (0: only at the end), got {log.val_every!r}")
        if log.val_batches < 1:
            raise ConfigError(f"log.val_batches: must be positive, got {log.val_batches!r}")
    ck = getattr(cfg, "checkpoint", None)
    if ck is not None:
        if ck.every < 0:
            raise ConfigError(f"checkpoint.every: must be >= 0 (0: only at the end), got {ck.every!r}")
        if ck.keep < 0:
            raise ConfigError(f"checkpoint.keep: must be >= 0 (0: keep all), got {ck.keep!r}")
    data = getattr(cfg, "data", None)
    if data is not None and hasattr(data, "seq_len"):
        if data.seq_len <= 0:
            raise ConfigError("data.seq_len: must be positive")
        for k, w in data.weights.items():
            if not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"data.weights.{k}: must be a non-negative number, got {w!r}")
    if isinstance(cfg, StageConfig):
        cfg.check()


def accumulation_steps(batch_tokens: int, micro_batch: int, seq_len: int, world: int = 1) -> int:
    """Micro-batches per rank per optimizer step. Refuses a batch that does not divide evenly."""
    per_micro = micro_batch * seq_len * world
    if batch_tokens % per_micro:
        raise ConfigError(
            f"train.batch_tokens: {batch_tokens} is not divisible by micro_batch x seq_len x data-parallel ranks "
            f"= {micro_batch} x {seq_len} x {world} = {per_micro}; use a multiple of {per_micro}, e.g. "
            f"{max(1, round(batch_tokens / per_micro)) * per_micro}")
    return batch_tokens // per_micro


# ----------------------------------------------------------------------------------------------------- TOML out

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} to TOML")


def to_toml(d: dict, prefix: str = "") -> str:
    """Nested dict -> TOML (None values are left out: TOML has no null)."""
    plain = [(k, v) for k, v in d.items() if not isinstance(v, dict) and v is not None]
    sections = [(k, v) for k, v in d.items() if isinstance(v, dict)]
    lines = [f"{k} = {_toml_value(v)}" for k, v in plain]
    for k, v in sections:
        lines += ["", f"[{prefix}{k}]", to_toml(v, f"{prefix}{k}.")]
    return "\n".join(lines).strip() + "\n"


def model_args_from(cfg: ModelConfig, vocab_size: int | None = None):
    from camelid.model import preset

    over = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("preset", "init_from") and v is not None}
    if vocab_size is not None and "vocab_size" not in over:
        over["vocab_size"] = vocab_size
    try:
        return preset(cfg.preset, **over)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
