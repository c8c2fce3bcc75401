"""Word-by-word BPE encoding through a cache gives SentencePiece's own ids, or is not used."""

import filecmp
import io
import json
import random

import numpy as np
import pytest
import sentencepiece as spm

from forge_data import DataPipelineConfig, PackingConfig, TokenizerConfig, run_pipeline
from forge_data.config import CleaningConfig
from forge_data.memoized_bpe import MemoizedBpeEncoder, unsupported_reason
from forge_data.tokenizer import Tokenizer, train_from_texts
from tests.data.corpora import BAD_CORPUS_MAX_REJECTED, make_text, stdlib_texts, write_bad_corpus

TRICKY = [
    "", " ", "   ", "a", " a", "a ", "a  b", "  leading spaces", "trailing spaces  ", "\n", " \n ",
    "tab\tand\nnewline \n    indented = 1\n\tx", "digits 12345 67 8", "literal \u2581 space symbol\u2581x",
    "\u2581\u2581 starts with it", "emoji \U0001F600 and CJK \u6f22\u5b57 and accents caf\u00e9",
    "<|im_start|> user <|im_start|>x<|im_start|>", "word" * 300 + " " + "z" * 5000,
]


def documents() -> list[bytes]:
    rng = random.Random(0)
    texts = TRICKY + stdlib_texts("json") + stdlib_texts("email")[:20] + [make_text(rng, 300) for _ in range(5)]
    raw = [t.encode() for t in texts]
    return raw + [b"not utf-8 \xff\xfe caf\xe9 \xe9t\xe9"]  # SentencePiece reads each bad byte as U+FFFD


def plain(tok: Tokenizer, texts: list[bytes], bos: bool, eos: bool) -> list[np.ndarray]:
    return tok.processor.encode(texts, out_type="numpy", add_bos=bos, add_eos=eos, num_threads=1)


def bpe(**kw) -> Tokenizer:
    cfg = TokenizerConfig(model_type="bpe", vocab_size=kw.pop("vocab_size", 500), show_progress=False, **kw)
    return train_from_texts(cfg, stdlib_texts("json") + stdlib_texts("email") + TRICKY)


@pytest.fixture(scope="module", params=["byte_fallback", "unknowns", "user_symbols"])
def word_local_bpe(request) -> Tokenizer:
    kw = {"byte_fallback": {}, "unknowns": {"byte_fallback": False, "character_coverage": 0.98},
          "user_symbols": {"user_defined_symbols": ["<|im_start|>"], "split_digits": False}}[request.param]
    tok = bpe(**kw)
    assert tok.batch_encoder == "memoized BPE"
    return tok


@pytest.mark.parametrize("bos,eos", [(False, True), (True, False), (True, True), (False, False)])
def test_memoized_ids_equal_sentencepiece_ids(word_local_bpe, bos, eos):
    tok, texts = word_local_bpe, documents()
    expected = plain(tok, texts, bos, eos)
    for batch in (texts, texts[::-1][:40], texts):  # cold, partly cached, all cached
        flat, offsets = tok.encode_flat(batch, add_bos=bos, add_eos=eos)
        want = expected if batch is texts else plain(tok, batch, bos, eos)
        assert flat.dtype == np.int32 and offsets.dtype == np.int64 and len(offsets) == len(batch) + 1
        for i, ids in enumerate(want):
            np.testing.assert_array_equal(flat[offsets[i]:offsets[i + 1]], ids, err_msg=repr(batch[i][:60]))
    assert tok._memoized.num_cached_words > 1000
    flat, offsets = tok.encode_flat([t.decode() for t in texts[:30]], add_bos=bos, add_eos=eos)  # str works too
    np.testing.assert_array_equal(flat, np.concatenate(expected[:30]))


def test_cache_is_bounded_and_starting_again_changes_no_id(small_tokenizer):
    texts = documents()
    encoder = MemoizedBpeEncoder(small_tokenizer.processor, small_tokenizer.model_proto, max_cached_words=200)
    expected = np.concatenate(plain(small_tokenizer, texts, False, True))
    clear, restarts = encoder._clear, []
    encoder._clear = lambda: (restarts.append(encoder.num_cached_words), clear())
    for start in range(0, len(texts), 7):  # many batches, the cache emptied again and again
        batch = texts[start:start + 7]
        flat, _ = encoder.encode(batch, eos_id=small_tokenizer.eos_id)
        np.testing.assert_array_equal(flat, np.concatenate(plain(small_tokenizer, batch, False, True)))
    assert len(restarts) >= 3 and min(restarts) > 200  # only ever dropped when over the bound
    flat, _ = encoder.encode(texts, eos_id=small_tokenizer.eos_id)
    np.testing.assert_array_equal(flat, expected)
    encoder.encode(texts[:1])
    assert encoder.num_cached_words < 200  # the oversized cache was dropped before the next batch


@pytest.mark.parametrize("kind", ["unigram", "nfkc", "switched_off"])
def test_models_that_are_not_word_local_are_encoded_plainly(kind):
    if kind == "unigram":
        tok = train_from_texts(TokenizerConfig(vocab_size=500, show_progress=False), stdlib_texts("json"))
        expect = "plain (model type UNIGRAM"
    elif kind == "nfkc":  # a dummy prefix: the first word of a document alone would gain a '▁'
        tok = bpe(identity_normalization=False)
        expect = "plain (normalizer 'nmt_nfkc'"
    else:
        tok = Tokenizer(bpe().model_proto, memoize_words=False)
        expect = "plain (switched off)"
    assert tok.batch_encoder.startswith(expect)
    texts = documents()[:40]
    flat, offsets = tok.encode_flat(texts, add_eos=True)
    assert tok._memoized is None
    np.testing.assert_array_equal(flat, np.concatenate(plain(tok, texts, False, True)))
    np.testing.assert_array_equal(np.diff(offsets), [len(a) for a in plain(tok, texts, False, True)])


def test_a_piece_joining_text_to_a_space_is_refused():
    """Trained across words, BPE learns pieces like 'e▁k': cutting at spaces would change ids."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["the king and the queen\n"] * 200), model_writer=model,
                                   model_type="bpe", vocab_size=40, split_by_whitespace=False,
                                   normalization_rule_name="identity", add_dummy_prefix=False,
                                   remove_extra_whitespaces=False, minloglevel=2)
    proto = model.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=proto)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert any("\u2581" in p.lstrip("\u2581") for p in pieces)  # the premise: such a piece exists
    reason = unsupported_reason(proto)
    assert reason is not None and "joins text to a following space" in reason
    with pytest.raises(ValueError, match="cannot encode this tokenizer word by word"):
        MemoizedBpeEncoder(processor, proto)
    # And the check matters: word by word, this model's ids differ from its own.
    words = [b"the", b" king", b" and", b" the", b" queen"]
    alone = np.concatenate(processor.encode(words, out_type="numpy"))
    assert not np.array_equal(alone, processor.encode(b"".join(words), out_type="numpy"))


def test_pipeline_shards_are_identical_with_and_without_the_cache(tmp_path):
    root = tmp_path / "corpus"
    write_bad_corpus(root)  # invalid UTF-8 repaired, every rejection, JSONL and Parquet inputs
    tok_dir = str(tmp_path / "tok")
    bpe(byte_fallback=False, vocab_size=300).save(tok_dir)
    manifests = []
    for memoize in (True, False):
        out = tmp_path / f"out_{memoize}"
        cfg = DataPipelineConfig(inputs=[str(root)], output_dir=str(out), work_unit_bytes=10_000, shard_tokens=64 * 16,
                                 cleaning=CleaningConfig(max_doc_bytes=50_000), packing=PackingConfig(seq_len=64),
                                 tokenizer=TokenizerConfig(model_path=tok_dir, memoize_words=memoize),
                                 max_rejected_share=BAD_CORPUS_MAX_REJECTED)
        manifests.append(run_pipeline(cfg, use_ray=False))
    on, off = tmp_path / "out_True", tmp_path / "out_False"
    shards = sorted(p.relative_to(on) for p in (on / "shards").iterdir())
    assert len(shards) > 4
    for f in shards + [on.joinpath("rejections.parquet").relative_to(on)]:
        assert filecmp.cmp(on / f, off / f, shallow=False), f
    assert manifests[0].tokenizer["encoder"] == "memoized BPE"
    assert manifests[1].tokenizer["encoder"] == "plain (switched off)"
    assert manifests[0].counts == manifests[1].counts and manifests[0].counts["tokens_written"] > 10_000
    data = [json.loads((o / "manifest.json").read_text()) for o in (on, off)]
    for d in data:
        d.pop("location"), d["tokenizer"].pop("encoder"), d["config"]["tokenizer"].pop("memoize_words")
    assert data[0] == data[1]
