"""PackedShardLoader: dp ranks disjoint, tp ranks identical, exact resume, deterministic epochs.

The dataset is built with `run_pipeline(use_ray=False)`: the same stages, no Ray needed.
"""


import numpy as np
import pytest
import torch

from tests.data.corpora import BAD_CORPUS_MAX_REJECTED, write_bad_corpus
from forge_data import IGNORE_INDEX, DataPipelineConfig, PackedShardLoader, PackingConfig, TokenizerConfig, run_pipeline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, small_tokenizer):
    root = tmp_path_factory.mktemp("loader")
    write_bad_corpus(root / "corpus")
    tok_dir = small_tokenizer.save(str(root / "tok"))
    cfg = DataPipelineConfig(inputs=[str(root / "corpus")], output_dir=str(root / "out"), work_unit_bytes=4000,
                             shard_tokens=64 * 8, packing=PackingConfig(seq_len=64),
                             tokenizer=TokenizerConfig(model_path=tok_dir), max_rejected_share=BAD_CORPUS_MAX_REJECTED)
    manifest = run_pipeline(cfg, use_ray=False)
    assert len(manifest.shards) > 3 and manifest.num_rows > 40
    return str(root / "out" / "manifest.json"), manifest.num_rows


def rows_seen(manifest_path, rank, size, num_batches, batch=3, start=0, seed=0):
    loader = PackedShardLoader(manifest_path, batch, dp_rank=rank, dp_size=size, start_sample=start,
                               shuffle_seed=seed, return_row_index=True)
    out = [loader.next_batch() for _ in range(num_batches)]
    return loader, out


def test_batch_contract(dataset):
    path, _ = dataset
    _, (b,) = rows_seen(path, 0, 1, 1)
    assert {k: v.dtype for k, v in b.items()} == {"input_ids": torch.int64, "labels": torch.int64,
                                                  "position_ids": torch.int64, "seq_idx": torch.int32,
                                                  "row_index": torch.int64}
    assert b["input_ids"].shape == (3, 64)


def test_dp_ranks_disjoint_and_cover_each_epoch_exactly_once(dataset):
    path, n = dataset
    size, batch = 2, 3
    steps = (2 * n) // (size * batch) + 1  # a bit more than two epochs
    seen = []
    for rank in range(size):
        _, batches = rows_seen(path, rank, size, steps, batch)
        seen.append([int(i) for b in batches for i in b["row_index"]])
    # Interleave back into the global stream: sample i went to rank i % size.
    stream = [seen[i % size][i // size] for i in range(size * len(seen[0]))]
    for epoch in range(2):
        assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n:2 * n]  # each epoch reshuffles


def test_tensor_parallel_peers_get_identical_rows(dataset):
    path, _ = dataset
    _, a = rows_seen(path, 1, 2, 4)
    _, b = rows_seen(path, 1, 2, 4)
    for x, y in zip(a, b):
        for key in x:
            assert torch.equal(x[key], y[key])


def test_resume_from_sample_offset_repeats_and_skips_nothing(dataset):
    path, _ = dataset
    _, full = rows_seen(path, 0, 2, 10)
    loader, first = rows_seen(path, 0, 2, 4)
    state = loader.state_dict()
    assert state["samples_consumed"] == 4 * 3 * 2
    resumed = PackedShardLoader(path, 3, dp_rank=0, dp_size=2, start_sample=state["samples_consumed"],
                                return_row_index=True)
    resumed.load_state_dict(state)
    rest = [resumed.next_batch() for _ in range(6)]
    for x, y in zip(full, first + rest):
        assert torch.equal(x["row_index"], y["row_index"]) and torch.equal(x["input_ids"], y["input_ids"])


def test_rows_come_back_as_written(dataset):
    path, n = dataset
    loader = PackedShardLoader(path, n, shuffle=False, return_row_index=True)
    b = loader.next_batch()
    assert torch.equal(b["row_index"], torch.arange(n))
    labels, ids = b["labels"], b["input_ids"]
    same_doc = (b["seq_idx"][:, 1:] == b["seq_idx"][:, :-1]) & (labels[:, :-1] != IGNORE_INDEX)
    assert torch.equal(labels[:, :-1][same_doc], ids[:, 1:][same_doc])  # labels are next tokens


def test_bad_arguments_are_refused(dataset):
    path, _ = dataset
    with pytest.raises(ValueError, match="dp_rank"):
        PackedShardLoader(path, 2, dp_rank=2, dp_size=2)
    with pytest.raises(ValueError, match="start_sample"):
        PackedShardLoader(path, 2, dp_rank=0, dp_size=2, start_sample=3)


def test_shuffle_mixes_rows_across_shards(dataset):
    """Consecutive batches draw from several shards at once, not one shard after another."""
    manifest = dataset[0]
    loader = PackedShardLoader(manifest, micro_batch_size=4, shuffle_seed=0, return_row_index=True)
    shard_of_row = np.searchsorted(loader._shard_starts, loader.next_batch()["row_index"].numpy(), side="right") - 1
    assert len(set(shard_of_row.tolist())) > 1
    narrow = PackedShardLoader(manifest, micro_batch_size=4, shuffle_seed=0, return_row_index=True,
                               shuffle_window=1)
    first = np.searchsorted(narrow._shard_starts, narrow.next_batch()["row_index"].numpy(), side="right") - 1
    assert len(set(first.tolist())) == 1  # the old behaviour: one shard at a time (shards hold 8 rows)
