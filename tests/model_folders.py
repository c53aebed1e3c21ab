"""Model folders with the faults a user who copies, converts and edits them meets (for test_bad_input).

``make_folders(root)`` writes one small, valid LLaMA folder (``good``: config, safetensors, tokenizer) and,
beside it, one folder per fault, each a copy of ``good`` with one thing broken.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

WORDS = [f"w{i}" for i in range(1, 10)]


def _tokenizer(vocab: dict):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _edit_config(folder: Path, **changes) -> None:
    data = json.loads((folder / "config.json").read_text())
    data.update(changes)
    (folder / "config.json").write_text(json.dumps(data))


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def make_folders(root: Path) -> Path:
    from safetensors.torch import load_file, save_file

    from conftest import tiny_model

    good = root / "good"
    model = tiny_model("llama")  # vocab 61, hidden 32, 3 layers, 4 heads / 2 KV heads, MLP 24
    model.save_pretrained(good)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    _tokenizer(vocab).save_pretrained(good)

    def variant(name: str) -> Path:
        target = root / name
        shutil.copytree(good, target)
        return target

    weights = good / "model.safetensors"
    _edit_config(variant("config-truncated"))
    _truncate(root / "config-truncated" / "config.json")
    (variant("config-empty") / "config.json").write_text("")
    folder = variant("config-folder")
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    _edit_config(variant("config-bad-value"), hidden_size="32")
    (variant("no-weights") / "model.safetensors").unlink()
    _truncate(variant("weights-truncated") / "model.safetensors", keep=weights.stat().st_size - 1000)
    (variant("weights-empty") / "model.safetensors").write_bytes(b"")
    (variant("weights-lfs") / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 84032\n")
    (variant("weights-garbage") / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (variant("weights-folder") / "model.safetensors").unlink()
    (root / "weights-folder" / "model.safetensors").mkdir()

    # shards: the tensors split over two files with an index, then one fault each
    tensors = load_file(weights)
    names = sorted(tensors)
    half = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for name, fault in (("shard-missing", "missing"), ("shard-index-corrupt", "index"), ("shard-index-wrong", "wrong"),
                        ("shard-no-index", "no-index"), ("sharded", None)):
        folder = variant(name)
        (folder / "model.safetensors").unlink()
        for shard, keys in half.items():
            save_file({k: tensors[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
        index = {"metadata": {}, "weight_map": {k: shard for shard, keys in half.items() for k in keys}}
        if fault == "wrong":
            index["weight_map"][names[0]] = "model-00002-of-00002.safetensors"
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        if fault == "missing":
            (folder / "model-00002-of-00002.safetensors").unlink()
        elif fault == "index":
            _truncate(folder / "model.safetensors.index.json")
        elif fault == "no-index":
            (folder / "model.safetensors.index.json").unlink()

    # config.json edited (or copied from another model) so that it no longer describes the weights
    _edit_config(variant("edited-hidden"), hidden_size=64)
    _edit_config(variant("edited-kv-heads"), num_key_value_heads=1)
    _edit_config(variant("edited-heads"), num_attention_heads=2, head_dim=8)
    _edit_config(variant("edited-mlp"), intermediate_size=48)
    _edit_config(variant("edited-vocab"), vocab_size=32000)
    _edit_config(variant("edited-more-layers"), num_hidden_layers=4)
    _edit_config(variant("edited-fewer-layers"), num_hidden_layers=2)
    folder = variant("no-lm-head")
    save_file({k: v for k, v in tensors.items() if k != "lm_head.weight"}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    folder = variant("missing-tensor")
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    _edit_config(variant("pruned-shapes"), model_type="pruned_llama", layer_shapes=[[4, 2, 24], [4, 2, 24]])

    # .bin weights
    import torch

    folder = variant("bin-truncated")
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    _truncate(folder / "pytorch_model.bin")
    folder = variant("gguf-only")
    (folder / "model.safetensors").unlink()
    (folder / "model-q4.gguf").write_bytes(b"GGUF" + bytes(64))

    # tokenizer
    folder = variant("no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    _truncate(variant("tokenizer-truncated") / "tokenizer.json")
    _truncate(variant("tokenizer-config-truncated") / "tokenizer_config.json")
    (variant("tokenizer-not-a-tokenizer") / "tokenizer.json").write_text('{"version": "1.0"}')
    folder = variant("tokenizer-other-model")
    _tokenizer({**vocab, **{w: 100 + i for i, w in enumerate(WORDS)}}).save_pretrained(folder)  # ids beyond vocab_size 61
    return root
