"""A local model folder is an input: its files are checked before any work, each fault refused in one line.

``check_model_folder`` reads only what is cheap: ``config.json``, the weight index, the header of every
safetensors file (``safetensors.safe_open`` reads the header and checks that the data it describes is all
there, without loading a tensor), the zip directory of a ``pytorch_model.bin`` and the tokenizer's JSON
files. It refuses, naming the file: a missing, empty, unreadable or corrupt file; a Git LFS pointer left
where the weights should be; a truncated safetensors file; a shard listed in the index but absent, or not
holding what the index says; tensors missing, surplus or of a shape other than ``config.json`` gives
(hidden size, heads, KV heads, head size, MLP width, layer count, vocabulary; a ``pruned_<base>`` folder's
``layer_shapes``); no tokenizer. What cannot be checked cheaply (the tokenizer's own parse, the weights'
bytes) is refused where it is read, with the same kind of line (``ModelFileError``).
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from prune.errors import ModelFileError

LFS_MAGIC = b"version https://git-lfs"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.model.v3")
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")
LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.(weight|bias)$")
SUPPORTED = ("llama", "mistral", "qwen2")


def read_json(path: Path, what: str = "") -> object:
    """The parsed JSON of ``path``; any way it cannot be read is one ``ModelFileError`` line naming it."""
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a file{what}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}{what}") from exc
    if not raw.strip():
        raise ModelFileError(f"{path} is empty{what}")
    if raw.startswith(LFS_MAGIC):
        raise ModelFileError(f"{path} is a Git LFS pointer, not the file: run `git lfs pull` in the model folder")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ": not UTF-8"
        raise ModelFileError(f"{path} is not valid JSON{where}; it is truncated or corrupt{what}") from exc


def read_config(folder: Path) -> dict:
    data = read_json(folder / "config.json")
    if not isinstance(data, dict):
        raise ModelFileError(f"{folder / 'config.json'} holds {type(data).__name__}, not a JSON object")
    return data


def check_model_folder(folder: Path, tokenizer_folder: Path | None = None) -> None:
    """Every cheap check of a local model folder (see the module docstring); raises ``ModelFileError``.
    ``tokenizer_folder``: ``model.tokenizer_path`` when set (the tokenizer is checked there instead)."""
    config = read_config(folder)
    model_type = str(config.get("model_type", ""))
    base = model_type[len("pruned_"):] if model_type.startswith("pruned_") else model_type
    if base not in SUPPORTED:  # another architecture is refused by its config check, in its own words
        return
    shapes = tensor_shapes(folder)
    if shapes is not None and not config.get("quantization_config"):
        check_shapes(folder, config, shapes)
    if tokenizer_folder is None:
        check_tokenizer_files(folder)
    elif tokenizer_folder.is_dir():  # else a hub id, checked when it is fetched
        check_tokenizer_files(tokenizer_folder, separate=True)


# ------------------------------------------------------------------------------------------ weights
def _check_blob(path: Path) -> None:
    """A weight file that exists, is a file, can be read, is not empty and is not a Git LFS pointer."""
    if not path.exists():
        raise ModelFileError(f"{path} is missing")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a weight file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_MAGIC))
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not head:
        raise ModelFileError(f"{path} is empty (0 bytes): copy the weights again")
    if head.startswith(LFS_MAGIC):
        raise ModelFileError(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in the model folder")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the header only; a truncated or corrupt file is refused naming it."""
    from safetensors import safe_open

    _check_blob(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError (a Rust type) and OSError: the file, not a bug
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "truncated (the header describes more data than the file holds)" if "not fully covered" in detail \
            else "not a valid safetensors file"
        raise ModelFileError(f"{path} is {kind}: {detail}; copy or convert it again") from exc


def _check_bin(path: Path) -> None:
    """A ``torch.save`` file is a zip archive: a truncated one has lost its directory (read without loading)."""
    _check_blob(path)
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is truncated or not a torch checkpoint ({exc}); copy it again") from exc


def _index(folder: Path, name: str) -> dict[str, str]:
    data = read_json(folder / name)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFileError(f"{folder / name} has no weight_map: not a Hugging Face weight index")
    return {str(k): str(v) for k, v in weight_map.items()}


def tensor_shapes(folder: Path) -> dict[str, list[int]] | None:
    """Every tensor's shape from the safetensors headers (None for ``.bin`` weights, whose files are checked
    but not opened). Shards are checked against their index."""
    if (folder / SAFETENSORS_INDEX).exists():
        index = _index(folder, SAFETENSORS_INDEX)
        shapes: dict[str, list[int]] = {}
        for shard in sorted(set(index.values())):
            if not (folder / shard).exists():
                raise ModelFileError(f"{folder / shard} is missing: {SAFETENSORS_INDEX} lists it; copy every shard")
            held = safetensors_shapes(folder / shard)
            shapes.update(held)
            wrong = sorted(name for name, where in index.items() if where == shard and name not in held)
            if wrong:
                raise ModelFileError(f"{folder / shard} lacks {wrong[0]}{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''}, "
                                     f"which {SAFETENSORS_INDEX} places there: the shards and the index do not match")
        return shapes
    if (folder / "model.safetensors").exists():
        return safetensors_shapes(folder / "model.safetensors")
    if (folder / BIN_INDEX).exists():
        for shard in sorted(set(_index(folder, BIN_INDEX).values())):
            if not (folder / shard).exists():
                raise ModelFileError(f"{folder / shard} is missing: {BIN_INDEX} lists it; copy every shard")
            _check_bin(folder / shard)
        return None
    if (folder / "pytorch_model.bin").exists():
        _check_bin(folder / "pytorch_model.bin")
        return None
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if shards:
        raise ModelFileError(f"{folder} has {shards[0]} but neither model.safetensors nor {SAFETENSORS_INDEX}: "
                             "copy the index with the shards (or name a single file model.safetensors)")
    others = sorted(p.name for p in folder.glob("*.gguf")) + sorted(p.name for p in folder.glob("*.pth"))
    hint = f" ({others[0]} is not a Hugging Face weight file: convert it)" if others else ""
    raise ModelFileError(f"{folder} has no weights: expected model.safetensors, {SAFETENSORS_INDEX} or pytorch_model.bin{hint}")


# ------------------------------------------------------------------------------------------- shapes
def _int(config: dict, key: str, default=None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelFileError(f"config.json: {key}={value!r} must be a positive integer")
    return value


def expected_shapes(config: dict) -> dict[str, list[int]]:
    """Tensor name (without the ``model.`` prefix) -> the shape ``config.json`` implies."""
    hidden, vocab, layers = _int(config, "hidden_size"), _int(config, "vocab_size"), _int(config, "num_hidden_layers")
    heads = _int(config, "num_attention_heads")
    kv = heads if config.get("num_key_value_heads") is None else _int(config, "num_key_value_heads")
    head_dim = config.get("head_dim") or hidden // heads
    inter = _int(config, "intermediate_size")
    widths = config.get("layer_shapes") or [[heads, kv, inter]] * layers
    if len(widths) != layers:
        raise ModelFileError(f"config.json: layer_shapes has {len(widths)} layers but num_hidden_layers={layers}")
    bias = bool(config.get("attention_bias")) or str(config.get("model_type", "")).endswith("qwen2")
    out = {"embed_tokens.weight": [vocab, hidden], "norm.weight": [hidden]}
    if not config.get("tie_word_embeddings", False):
        out["lm_head.weight"] = [vocab, hidden]
    for i, (h, k, m) in enumerate(widths):
        p = f"layers.{i}."
        if k:
            out.update({p + "self_attn.q_proj.weight": [h * head_dim, hidden], p + "self_attn.k_proj.weight": [k * head_dim, hidden],
                        p + "self_attn.v_proj.weight": [k * head_dim, hidden], p + "self_attn.o_proj.weight": [hidden, h * head_dim]})
            if bias:
                out.update({p + "self_attn.q_proj.bias": [h * head_dim], p + "self_attn.k_proj.bias": [k * head_dim],
                            p + "self_attn.v_proj.bias": [k * head_dim]})
        if m:
            out.update({p + "mlp.gate_proj.weight": [m, hidden], p + "mlp.up_proj.weight": [m, hidden],
                        p + "mlp.down_proj.weight": [hidden, m]})
    return out


def check_shapes(folder: Path, config: dict, shapes: dict[str, list[int]]) -> None:
    """The tensors against ``config.json``: none missing, none of another shape, no layer beyond the count."""
    found = {(name[len("model."):] if name.startswith("model.") else name): shape for name, shape in shapes.items()}
    expected = expected_shapes(config)
    layers = int(config["num_hidden_layers"])
    beyond = sorted({int(m.group(1)) for name in found if (m := LAYER.match(name))} - set(range(layers)))
    if beyond:
        raise ModelFileError(f"{folder} holds weights of layer {beyond[0]}, but config.json says num_hidden_layers={layers}: "
                             "the config and the weights come from different models")
    for name, shape in expected.items():
        if name not in found:
            if name == "lm_head.weight":
                raise ModelFileError(f"{folder} has no lm_head.weight, but config.json says tie_word_embeddings=false; "
                                     "set it to true if the model ties its output to the embeddings")
            raise ModelFileError(f"{folder} has no tensor {name} (config.json: {layers} layers of this width): the weights "
                                 "are incomplete or from another model")
        if list(found[name]) != list(shape):
            raise ModelFileError(f"{folder}: tensor {name} has shape {list(found[name])}, but config.json implies {shape} "
                                 f"({_which(name, config)}): the config and the weights do not match")


def _which(name: str, config: dict) -> str:
    keys = {"embed_tokens": "vocab_size, hidden_size", "lm_head": "vocab_size, hidden_size", "norm": "hidden_size",
            "q_proj": "num_attention_heads, head_dim, hidden_size", "o_proj": "num_attention_heads, head_dim, hidden_size",
            "k_proj": "num_key_value_heads, head_dim, hidden_size", "v_proj": "num_key_value_heads, head_dim, hidden_size",
            "gate_proj": "intermediate_size, hidden_size", "up_proj": "intermediate_size, hidden_size",
            "down_proj": "intermediate_size, hidden_size"}
    part = next((v for k, v in keys.items() if k in name), "its sizes")
    return part + (", layer_shapes" if config.get("layer_shapes") and "layers." in name else "")


# ----------------------------------------------------------------------------------------- tokenizer
def check_tokenizer_files(folder: Path, separate: bool = False) -> None:
    """Tokenizer files present, and the JSON ones parse (the tokenizer itself is parsed when it is loaded)."""
    what = "model.tokenizer_path" if separate else "model.path"
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ModelFileError(f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}): copy it into the folder "
                             f"or set model.tokenizer_path=<folder with the tokenizer>" if not separate else
                             f"{what}={folder} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])})")
    for name in TOKENIZER_JSON:
        if (folder / name).exists():
            read_json(folder / name)


def check_vocabulary(ids_max: int, config, tokenizer_where: str) -> None:
    """Token ids the tokenizer produced must index the embedding (``config.vocab_size``)."""
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab and ids_max >= vocab:
        raise ModelFileError(f"the tokenizer of {tokenizer_where} produces token id {ids_max}, but config.json says "
                             f"vocab_size={vocab}: the tokenizer belongs to another model (set model.tokenizer_path)")
