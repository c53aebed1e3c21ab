"""Calibration and evaluation windows: exact lengths, seeded, train/test kept apart, clear refusals."""
import pytest
import torch

from conftest import compose_config
from prune.data import DataError, HubSource, TextFilesSource, calibration_windows, evaluation_windows, tokenize_documents

STREAM = torch.arange(10_000)


def test_calibration_windows_are_exact_seeded_and_disjoint():
    a = calibration_windows(STREAM, 128, 16, seed=0)
    assert a.shape == (16, 128)
    assert torch.equal(a, calibration_windows(STREAM, 128, 16, seed=0))
    assert not torch.equal(a, calibration_windows(STREAM, 128, 16, seed=1))
    # each window is a contiguous slice of the stream, and no two windows share a token
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(16, 127, dtype=torch.long))
    assert len(set(a.flatten().tolist())) == a.numel()


def test_calibration_block_gives_the_same_text_at_every_length():
    long = calibration_windows(STREAM, 512, 4, seed=3, block_len=512)
    short = calibration_windows(STREAM, 128, 16, seed=3, block_len=512)
    assert torch.equal(long.flatten().sort().values, short.flatten().sort().values)
    # the windows of one block are spread over the batches, not kept side by side (the Fisher estimate
    # from batch gradients assumes the sequences of a batch are exchangeable)
    follows = (short[1:, 0] == short[:-1, -1] + 1).float().mean().item()
    assert follows < 0.5
    with pytest.raises(DataError, match="multiple of seq_len"):
        calibration_windows(STREAM, 384, 4, seed=0, block_len=512)


def test_too_little_text_is_refused_with_numbers():
    with pytest.raises(DataError, match=r"10,000 tokens, too few for num_samples=32 x seq_len=512"):
        calibration_windows(STREAM, 512, 32, seed=0)


def test_evaluation_windows_tile_the_stream_in_order():
    w = evaluation_windows(STREAM, 1000, max_tokens=4500)
    assert w.shape == (4, 1000) and torch.equal(w.flatten(), STREAM[:4000])
    with pytest.raises(DataError):
        evaluation_windows(STREAM[:10], 128)


class CharTokenizer:
    """Stand-in tokenizer: one id per character, BOS = 1 prepended."""

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [1] + [ord(c) for c in text]}


def test_tokenize_documents_joins_or_opens_each_document_with_bos():
    tok = CharTokenizer()
    assert tokenize_documents(["ab", "c"], tok, join="\n\n").tolist() == [1, 97, 98, 10, 10, 99]
    assert tokenize_documents(["ab", "c"], tok, bos_per_document=True).tolist() == [1, 97, 98, 1, 99]


@pytest.fixture
def two_files(tmp_path):
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("alpha beta gamma\n" * 50)
    test.write_text("delta epsilon\n" * 50)
    return train, test


def test_text_source_reads_train_and_test_files_apart(two_files):
    train, test = two_files
    source = TextFilesSource(train_files=str(train), eval_files=[str(test)])
    assert source.texts("train") == [train.read_text()]
    assert source.texts("test") == [test.read_text()]


def test_text_source_refuses_the_same_file_for_calibration_and_evaluation(two_files):
    train, _ = two_files
    with pytest.raises(DataError, match="must differ"):
        TextFilesSource(train_files=str(train), eval_files=str(train))
    with pytest.raises(DataError, match="not found"):
        TextFilesSource(train_files=str(train), eval_files="/nonexistent.txt")
    with pytest.raises(DataError, match="needs data.train_files"):
        TextFilesSource()


def test_hub_loader_code_runs_on_local_files_through_the_wikitext_config(two_files):
    """The wikitext2 config's real loader, pointed at local files with the `text` builder."""
    from hydra.utils import instantiate

    train, test = two_files
    cfg = compose_config(
        "data=wikitext2", "data.path=text", "data.subset=null",
        f"data.data_files={{train: '{train}', test: '{test}'}}", "+data.load_kwargs.sample_by=document",
    )
    source = instantiate(cfg.data)
    assert isinstance(source, HubSource) and source.join == "\n\n"
    assert source.texts("test") == [test.read_text()]


def test_c4_loader_draws_calibration_with_the_seed_but_evaluates_on_fixed_documents(tmp_path):
    """The c4 config shuffles and caps documents; only the train role may follow the run's seed."""
    from hydra.utils import instantiate

    train, test = tmp_path / "train.txt", tmp_path / "validation.txt"
    train.write_text("".join(f"train document {i}\n" for i in range(40)))
    test.write_text("".join(f"held-out document {i}\n" for i in range(40)))
    cfg = compose_config(
        "data=c4", "data.path=text", f"data.data_files.train={train}", f"data.data_files.validation={test}",
        "data.max_documents.train=5", "data.max_documents.test=5",
    )
    source = instantiate(cfg.data)
    assert source.texts("train", seed=0) != source.texts("train", seed=1)
    assert source.texts("test", seed=0) == source.texts("test", seed=1)
    assert len(source.texts("test", seed=1)) == 5


@pytest.mark.parametrize("name", ["wikitext2", "c4", "ptb"])
def test_offline_hub_data_is_refused_in_one_line(name):
    from hydra.utils import instantiate

    source = instantiate(compose_config(f"data={name}").data)
    with pytest.raises(DataError) as info:
        source.texts("train")
    message = str(info.value)
    assert "\n" not in message and "offline" in message and source.path in message
