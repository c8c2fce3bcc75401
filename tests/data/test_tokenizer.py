"""The tokenizer wrapper, training and the sample's keys without Ray (the Ray-drawn sample end to end: test_pipeline)."""

import numpy as np
import pytest

from tests.data.corpora import make_text, stdlib_texts
from forge_data.config import TokenizerConfig
from forge_data.tokenizer import load_tokenizer, sentencepiece_trainer_args, split_sentences, train_from_texts
from pathlib import Path
import random

BUNDLED_SHAKESPEARE = Path(__file__).resolve().parents[2] / "datasets" / "tinyshakespeare" / "input.txt"


def test_round_trip_and_special_ids(small_tokenizer):
    text = stdlib_texts("json")[0]
    ids = small_tokenizer.encode(text)
    assert small_tokenizer.decode(ids) == text  # identity normalization: exact round trip
    assert (small_tokenizer.bos_id, small_tokenizer.eos_id, small_tokenizer.pad_id) == (1, 2, 3)
    arrays = small_tokenizer.encode_numpy([text, "x"], add_eos=True)
    assert arrays[0].dtype == np.int32 and list(arrays[0][:-1]) == ids and arrays[0][-1] == 2


def test_training_is_deterministic_and_saved_with_its_config(tmp_path, small_tokenizer):
    cfg = TokenizerConfig(model_type="bpe", vocab_size=400, show_progress=False, sample_bytes=1 << 20)
    again = train_from_texts(cfg, stdlib_texts("json") + stdlib_texts("email"))
    assert again.sha256 == small_tokenizer.sha256
    path = again.save(str(tmp_path / "tok"))
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.sha256 == again.sha256 and load_tokenizer(path).vocab_size == 400
    assert loaded.metadata["config"]["vocab_size"] == 400 and len(loaded.metadata["sample_sha256"]) == 64


def test_char_model_one_id_per_character():
    text = make_text(random.Random(0), 400) + "ABC, xyz!\n"
    cfg = TokenizerConfig(model_type="char", vocab_size=1000, byte_fallback=False, character_coverage=1.0,
                          show_progress=False)
    tok = train_from_texts(cfg, [text])
    assert tok.vocab_size == len(set(text)) + 4  # characters + unk, bos, eos, pad
    assert len(tok.encode(text)) == len(text) and tok.decode(tok.encode(text)) == text


@pytest.mark.skipif(not BUNDLED_SHAKESPEARE.exists(), reason="bundled tiny Shakespeare not committed yet")
def test_char_model_on_tiny_shakespeare_has_65_characters():
    cfg = TokenizerConfig(model_type="char", vocab_size=1000, byte_fallback=False, character_coverage=1.0,
                          show_progress=False)
    tok = train_from_texts(cfg, [BUNDLED_SHAKESPEARE.read_text()])
    assert tok.vocab_size == 65 + 4


def test_user_defined_symbols_are_single_pieces():
    cfg = TokenizerConfig(vocab_size=320, model_type="bpe", user_defined_symbols=["<|im_start|>"], show_progress=False)
    tok = train_from_texts(cfg, [make_text(random.Random(1), 2000)])
    ids = tok.encode("<|im_start|>the king")
    assert tok.processor.id_to_piece(ids[0]) == "<|im_start|>"


def test_sentences_keep_newlines_and_respect_the_limit():
    text = "a" * 25 + "\nshort\n" + "b\n" * 10
    pieces = list(split_sentences(text, 10))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 10


def test_trainer_args_follow_config():
    args = sentencepiece_trainer_args(TokenizerConfig(model_type="char", identity_normalization=True))
    assert args["hard_vocab_limit"] is False and args["normalization_rule_name"] == "identity"
    assert args["input_sentence_size"] == 0  # no random subsampling inside SentencePiece


def test_sample_rows_do_not_depend_on_where_the_corpus_lives(tmp_path):
    """The Ray Data sampling function, called directly: same keys, ids and texts in two folders."""
    import shutil

    import pyarrow as pa

    from forge_data.config import CleaningConfig
    from forge_data.sources import encode_unit, list_input_files, plan_work_units
    from forge_data.tokenizer_training import sample_units
    from tests.data.corpora import write_bad_corpus

    write_bad_corpus(tmp_path / "a" / "corpus")
    shutil.copytree(tmp_path / "a", tmp_path / "b" / "deeper")
    rows = []
    for root in (str(tmp_path / "a" / "corpus"), str(tmp_path / "b" / "deeper" / "corpus") + "/"):
        units = plan_work_units(list_input_files([root], "auto", []), 20_000, 0)
        batch = pa.Table.from_pylist([encode_unit(i, u) for i, u in enumerate(units)])
        rows.append(sample_units(batch, "text", CleaningConfig(max_doc_bytes=50_000), 0.5, 0).to_pylist())
    assert rows[0] == rows[1] and 3 < len(rows[0])
    assert not any(str(tmp_path) in r["id"] for r in rows[0])



def test_a_vocabulary_the_sample_cannot_fill_is_one_line_naming_the_bound():
    from forge_data.tokenizer import TokenizerTrainingError

    with pytest.raises(TokenizerTrainingError) as caught:
        train_from_texts(TokenizerConfig(vocab_size=5000, show_progress=False), ["hello world " * 50, "abc def"])
    message = str(caught.value)
    assert "\n" not in message and "INTERNAL" not in message
    bound = int(message.split("set data.tokenizer.vocab_size <= ")[1].split(",")[0])
    assert message.startswith("tokenizer.vocab_size = 5000: the tokenizer's sample (2 sentences) yields at most")
    train_from_texts(TokenizerConfig(vocab_size=bound, show_progress=False), ["hello world " * 50, "abc def"])
