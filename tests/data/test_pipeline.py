"""End to end with Ray Data: accounting, no tokens lost at block edges, byte-identical reruns."""

import filecmp
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from forge_data import (CleaningConfig, DataPipelineConfig, LongContextConfig, Manifest, PackingConfig,
                        TokenizerConfig, load_tokenizer, run_pipeline, train_tokenizer)
from forge_data.cleaning import clean_documents
from forge_data.readers import read_file_part
from forge_data.shards import read_shard
from forge_data.sources import list_input_files, plan_work_units
from tests.data.corpora import BAD_CORPUS_MAX_REJECTED

pytestmark = pytest.mark.slow
CLEANING = CleaningConfig(max_doc_bytes=50_000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.data.corpora import write_bad_corpus

    root = tmp_path_factory.mktemp("pipeline") / "corpus"
    return root, write_bad_corpus(root)


TOKENIZER = TokenizerConfig(vocab_size=40, byte_fallback=False, show_progress=False, sample_bytes=60_000)


@pytest.fixture(scope="module")
def tokenizer_dir(ray_session, corpus, tmp_path_factory):
    """Trained through Ray Data's deterministic sample of the whole corpus."""
    out = tmp_path_factory.mktemp("tok")
    path = train_tokenizer(TOKENIZER, [str(corpus[0])], str(out / "a"), cleaning=CLEANING, work_unit_bytes=20_000)
    again = train_tokenizer(TOKENIZER, [str(corpus[0])], str(out / "b"), cleaning=CLEANING, work_unit_bytes=50_000)
    assert load_tokenizer(path).sha256 == load_tokenizer(again).sha256  # independent of block layout
    assert load_tokenizer(path).metadata["sample_bytes"] <= 60_000 + 50_000
    return str(Path(path).parent)


def test_tokenizer_sample_does_not_depend_on_where_the_corpus_lives(ray_session, corpus, tokenizer_dir, tmp_path):
    """Another run on the same corpus in another folder (another CI checkout) draws the same sample.

    Keys of absolute document ids once gave every run its own sample, and a vocabulary size that
    one sample could fill and the next could not.
    """
    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(corpus[0], moved)
    path = train_tokenizer(TOKENIZER, [str(moved) + "/"], str(tmp_path / "tok"), cleaning=CLEANING,
                           work_unit_bytes=30_000)
    first, again = load_tokenizer(tokenizer_dir), load_tokenizer(path)
    assert again.metadata["sample_sha256"] == first.metadata["sample_sha256"]
    assert again.metadata["sample_docs"] == first.metadata["sample_docs"] > 3
    assert again.sha256 == first.sha256


def config(corpus, tokenizer_dir, out, **kw):
    packing = kw.pop("packing", PackingConfig(seq_len=64))
    return DataPipelineConfig(inputs=[str(corpus[0])], output_dir=str(out), work_unit_bytes=10_000,
                              shard_tokens=64 * 16, num_tokenize_actors=kw.pop("num_tokenize_actors", 1), cleaning=CLEANING, packing=packing,
                              tokenizer=TokenizerConfig(model_path=tokenizer_dir), max_rejected_share=BAD_CORPUS_MAX_REJECTED,
                              **kw)


def expected_documents(cfg):
    """Kept documents and their texts, recomputed with the pure stages (no Ray)."""
    texts = {}
    for unit in plan_work_units(list_input_files(cfg.inputs, "auto", []), cfg.work_unit_bytes, 0):
        for part in unit:
            read = read_file_part(part, cfg.text_field)
            cleaned = clean_documents(read.raws, read.read_errors, cfg.cleaning)
            texts.update((d, t) for d, t in zip(read.doc_ids, cleaned.texts) if t is not None)
    return texts


def tokens_by_document(out_dir):
    """Rebuild every document's token stream from shards + segments (proves where each token went)."""
    manifest = Manifest.load(str(out_dir))
    pieces = defaultdict(list)
    for shard in manifest.shards:
        data = read_shard(str(Path(out_dir) / shard.path))
        seg = pq.read_table(str(Path(out_dir) / shard.path).replace(".parquet", ".segments.parquet")).to_pylist()
        for s in seg:
            row_seq = data["seq_idx"][s["row"]]
            ids = data["input_ids"][s["row"]][row_seq == s["seq_idx"]]
            assert len(ids) == s["num_tokens"]
            pieces[s["doc_id"]].append((s["doc_token_offset"], ids))
    return manifest, {d: np.concatenate([ids for _, ids in sorted(p, key=lambda x: x[0])]) for d, p in pieces.items()}


@pytest.mark.parametrize("packer", ["greedy", "best_fit"])
def test_accounting_and_no_tokens_lost_across_blocks(ray_session, corpus, tokenizer_dir, tmp_path, packer):
    cfg = config(corpus, tokenizer_dir, tmp_path / "out", packing=PackingConfig(seq_len=64, packer=packer),
                 num_tokenize_actors=2)
    manifest = run_pipeline(cfg)
    c = manifest.counts
    assert c["docs_in"] == c["docs_packed"] + c["docs_rejected"]
    assert c["tokens_tokenized"] == c["tokens_written"] + c["tokens_truncated"] and c["tokens_truncated"] == 0
    assert manifest.rejected_by_reason == {k: v for k, v in corpus[1].items() if k != "invalid_utf8"}
    assert manifest.repaired_by_reason == {"invalid_utf8": 2}
    assert len({s.path.split("-")[1] for s in manifest.shards}) > 5  # several blocks really ran
    rejections = pq.read_table(tmp_path / "out" / "rejections.parquet").to_pylist()
    assert Counter(r["reason"] for r in rejections if r["action"] == "rejected") == Counter(manifest.rejected_by_reason)

    tok = load_tokenizer(tokenizer_dir)
    texts = expected_documents(cfg)
    _, got = tokens_by_document(tmp_path / "out")
    assert set(got) == set(texts) and len(texts) == c["docs_packed"]
    for doc_id, text in texts.items():
        np.testing.assert_array_equal(got[doc_id], tok.encode(text) + [tok.eos_id])
    assert manifest.inputs[0]["sha256"] and manifest.tokenizer["sha256"] == tok.sha256


def test_rerun_is_byte_identical_and_matches_in_process_run(ray_session, corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    cfg = config(corpus, tokenizer_dir, out)
    run_pipeline(cfg)
    shutil.copytree(out, tmp_path / "first")
    run_pipeline(cfg)
    run_pipeline(config(corpus, tokenizer_dir, tmp_path / "serial"), use_ray=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert any(str(f).startswith("shards/") for f in files)
    for f in files:
        assert filecmp.cmp(out / f, tmp_path / "first" / f, shallow=False), f
        if f.name != "manifest.json":  # the manifest records its own output_dir, in `location`
            assert filecmp.cmp(out / f, tmp_path / "serial" / f, shallow=False), f
    assert without_location(out / "manifest.json")[0] == without_location(tmp_path / "serial" / "manifest.json")[0]


def without_location(path):
    """A JSON file's text with its "location" entry removed, and that entry."""
    data = json.loads(Path(path).read_text())
    location = data.pop("location")
    return json.dumps(data, sort_keys=True), location


def test_same_corpus_in_two_folders_gives_identical_outputs(ray_session, corpus, tmp_path):
    """Two checkouts of one corpus (tokenizer trained in the run too): byte-identical shards,
    segments and rejections; manifests and tokenizer.json differ only in their "location" field."""
    copies = [tmp_path / "one" / "corpus", tmp_path / "two" / "deeper" / "corpus"]
    outs = [tmp_path / "one" / "out", tmp_path / "elsewhere" / "out"]
    manifests = []
    for copy, out in zip(copies, outs):
        shutil.copytree(corpus[0], copy)
        cfg = DataPipelineConfig(inputs=[str(copy)], output_dir=str(out), work_unit_bytes=10_000, shard_tokens=64 * 16,
                                 cleaning=CLEANING, packing=PackingConfig(seq_len=64), tokenizer=TOKENIZER,
                                 max_rejected_share=BAD_CORPUS_MAX_REJECTED)
        manifests.append(run_pipeline(cfg))
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    assert any(f.name.endswith(".segments.parquet") for f in files) and Path("rejections.parquet") in files
    for f in files:
        if f.suffix != ".json":
            assert filecmp.cmp(outs[0] / f, outs[1] / f, shallow=False), f
    for name in ("manifest.json", "tokenizer/tokenizer.json"):
        (text0, loc0), (text1, loc1) = (without_location(out / name) for out in outs)
        assert text0 == text1, name
        assert str(tmp_path) not in text0, name  # no path outside the location field
        assert loc0["inputs"] == [str(copies[0])] and loc1["inputs"] == [str(copies[1])]
        assert loc0["input_root"] == str(copies[0]) + "/"
    assert manifests[0].location["output_dir"] == str(outs[0])

    # Every document is accounted for: documents in = packed (in some segment) + rejected.
    c = manifests[0].counts
    packed = set()
    for shard in manifests[0].shards:
        packed.update(pq.read_table(outs[0] / shard.path.replace(".parquet", ".segments.parquet")).column("doc_id").to_pylist())
    rejections = pq.read_table(outs[0] / "rejections.parquet").to_pylist()
    rejected = {r["doc_id"] for r in rejections if r["action"] == "rejected"}
    assert len(packed) == c["docs_packed"] and len(rejected) == c["docs_rejected"] and not packed & rejected
    assert c["docs_in"] == len(packed) + len(rejected)
    names = [i["name"] for i in manifests[0].inputs]
    assert names == sorted(str(p.relative_to(copies[0])) for p in copies[0].rglob("*") if p.is_file())
    assert set(names) >= {d.split("#")[0] for d in packed | rejected}


def test_long_context_selection_and_upweighting(ray_session, corpus, tokenizer_dir, tmp_path):
    lc = LongContextConfig(min_doc_tokens=200, upweight_min_tokens=400, upweight_factor=3)
    manifest = run_pipeline(config(corpus, tokenizer_dir, tmp_path / "lc", long_context=lc))
    c = manifest.counts
    assert c["docs_in"] == c["docs_packed"] + c["docs_rejected"]
    assert c["tokens_tokenized"] - c["tokens_filtered"] + c["tokens_repeated"] == c["tokens_written"] + c["tokens_truncated"]
    assert manifest.rejected_by_reason["long_context_filtered"] > 0 and c["docs_repeated"] > 0
    assert c["tokens_repeated"] > 0 and c["tokens_filtered"] > 0
