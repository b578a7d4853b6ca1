"""Everything llmlab writes through its atomic helpers gets the modes the user's umask gives, not tempfile's 0600/0700."""

import os
import stat

import pytest
import torch

import llmlab
from llmlab.data.dedup import DedupIndex
from llmlab.data.jsonl import write_documents
from llmlab.data.shards import tokenize_to_shards
from llmlab.data.tokenizer import train_tokenizer
from llmlab.model import Model, ModelConfig
from llmlab.train.checkpoint import save_checkpoint

TINY = dict(vocab_size=61, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=32)


@pytest.fixture(params=[0o022, 0o027], ids=["022", "027"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def modes(root):
    """{relative path: permission bits} of root and everything below it."""
    paths = [root, *root.rglob("*")]
    return {str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in paths}


def expected(root, mask):
    return {name: (0o777 if (root / name).is_dir() else 0o666) & ~mask for name in modes(root)}


def test_checkpoints_follow_the_umask(tmp_path, umask):
    model = Model(ModelConfig(**TINY))
    llmlab.save(model, tmp_path / "ckpt")
    save_checkpoint(tmp_path / "run", 1, model, {"step": 1})
    for root in (tmp_path / "ckpt", tmp_path / "run"):
        assert modes(root) == expected(root, umask)


def test_data_outputs_follow_the_umask(tmp_path, umask):
    write_documents(tmp_path / "out.jsonl", [{"text": "hello", "meta": {}}])
    tokenizer = train_tokenizer(["hello world"] * 20, 300)
    tokenize_to_shards(["hello world"], tokenizer, tmp_path / "shards")
    DedupIndex().save(tmp_path / "index")
    assert modes(tmp_path) == expected(tmp_path, umask) | {".": stat.S_IMODE(tmp_path.stat().st_mode)}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index", "out.jsonl", "shards"]
