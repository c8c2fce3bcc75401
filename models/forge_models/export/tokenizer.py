"""Our SentencePiece tokenizer as a transformers tokenizer, where the conversion is exact.

A SentencePiece BPE model with identity normalization (forge_data's default normalization: no
NFKC, no invented leading space, whitespace kept) becomes a `tokenizers` BPE with the same
vocabulary, merges ordered by piece score, byte fallback, spaces written as "▁", and words split
where SentencePiece splits them: a run of "▁" starts a word (`allow_whitespace_only_pieces`, which
forge_data always sets), or each "▁" does. Measured: the same ids as SentencePiece on 16K
paragraphs of the interpreter's Python sources, the 7.2K paragraphs of tiny Shakespeare and
strings of mixed scripts and emoji (tests/models/test_hf_export.py checks a sample of them).

Not converted (the `.model` ships alone and the reason is written down):
- unigram models: SentencePiece's Viterbi and tokenizers' Unigram break ties between segmentations
  of equal score differently (runs of "#" came out split at other places: 80 of 16K paragraphs);
- any normalization but identity, a dummy prefix, removed whitespace: not reproduced here;
- user-defined or extra control symbols: SentencePiece never matches control symbols in text,
  while a transformers tokenizer matches its added tokens.
"""

from __future__ import annotations

from pathlib import Path

# sentencepiece_model.proto's enums.
_BPE = 2
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def _read_proto(model_file: str | Path):  # noqa: ANN202 - a protobuf ModelProto
    from sentencepiece import sentencepiece_model_pb2  # lazy: only an export with a tokenizer needs it

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


def conversion_blocker(model_file: str | Path) -> str | None:
    """Why this SentencePiece model cannot become an exact transformers tokenizer, or None."""
    proto = _read_proto(model_file)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    special_ids = {trainer.bos_id, trainer.eos_id, trainer.pad_id}
    if trainer.model_type != _BPE:
        return ("a unigram (or char / word) SentencePiece model: tokenizers' Unigram breaks ties between "
                "equal-score segmentations differently from SentencePiece")
    if norm.name != "identity" or norm.precompiled_charsmap or norm.add_dummy_prefix or norm.remove_extra_whitespaces:
        return f"normalization {norm.name!r} (dummy prefix, whitespace removal): only identity is converted"
    if not trainer.split_by_whitespace or trainer.treat_whitespace_as_suffix:
        return "words not split at whitespace, or whitespace as a suffix: not converted"
    extra = [p.piece for i, p in enumerate(proto.pieces)
             if p.type == _USER_DEFINED or (p.type == _CONTROL and i not in special_ids)]
    if extra:
        return f"user-defined or control symbols {extra[:5]}: a transformers tokenizer would match them in text"
    return None


def write_hf_tokenizer(model_file: str | Path, out_dir: str | Path) -> None:
    """Write tokenizer.json and tokenizer_config.json reproducing `model_file`'s ids exactly.
    ValueError with the reason when `conversion_blocker` names one. No BOS or EOS is added on
    encode (as SentencePiece's `encode`); the data pipeline's document-end EOS is the caller's."""
    # Lazy: tokenizers and transformers come with the export, not with forge_models.
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    reason = conversion_blocker(model_file)
    if reason is not None:
        raise ValueError(f"tokenizer {model_file} cannot be converted exactly: {reason}")
    proto = _read_proto(model_file)
    trainer = proto.trainer_spec
    scores = [(p.piece, p.score) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _) in enumerate(scores)}
    bpe = BPE(vocab=vocab, merges=generate_merges(vocab, scores), unk_token=trainer.unk_piece, fuse_unk=True,
              byte_fallback=trainer.byte_fallback)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    word = "▁+[^▁]*|[^▁]+" if trainer.allow_whitespace_only_pieces else "▁[^▁]*|[^▁]+"
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(word), behavior="isolated")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    names = {"unk_token": trainer.unk_id, "bos_token": trainer.bos_id, "eos_token": trainer.eos_id,
             "pad_token": trainer.pad_id}
    specials = {name: proto.pieces[i].piece for name, i in names.items() if i >= 0}
    # split_special_tokens: "</s>" in a text is text, as SentencePiece encodes it, not the EOS id.
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, split_special_tokens=True, **specials)
    fast.save_pretrained(str(out_dir))
