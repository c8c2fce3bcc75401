"""Reading and cleaning without Ray: every bad input is counted with its reason, nothing crashes."""

import gzip
import hashlib
import json
from collections import Counter

import pytest

from forge_data.cleaning import clean_document, clean_documents
from forge_data.config import CleaningConfig
from forge_data.readers import read_file_part
from forge_data.sources import FilePart, input_root, list_input_files, plan_work_units


def read_all(root, cfg, unit_bytes=10_000):
    files = list_input_files([str(root)], "auto", [])
    docs, reasons = [], Counter()
    for unit in plan_work_units(files, unit_bytes, shuffle_seed=0):
        for part in unit:
            read = read_file_part(part, "text")
            cleaned = clean_documents(read.raws, read.read_errors, cfg)
            docs += read.doc_ids
            reasons.update((a, r) for a, r in zip(cleaned.actions, cleaned.reasons) if a)
    return docs, reasons


def test_bad_corpus_every_reason_counted(bad_corpus):
    root, expected = bad_corpus
    docs, reasons = read_all(root, CleaningConfig(invalid_utf8="reject", max_doc_bytes=50_000))
    assert {r: n for (a, r), n in reasons.items() if a == "rejected"} == expected
    assert len(docs) == len(set(docs))  # ids are unique
    docs2, _ = read_all(root, CleaningConfig(invalid_utf8="reject", max_doc_bytes=50_000))
    assert docs == docs2  # and stable


def test_repair_policies_keep_documents(bad_corpus):
    root, _ = bad_corpus
    _, reasons = read_all(root, CleaningConfig(invalid_utf8="repair", oversize="truncate", max_doc_bytes=50_000))
    assert reasons[("repaired", "invalid_utf8")] == 2 and reasons[("repaired", "oversize")] == 1
    assert ("rejected", "invalid_utf8") not in reasons and ("rejected", "oversize") not in reasons


@pytest.mark.parametrize("policy", ["reject", "repair"])
def test_batch_cleaning_matches_the_obvious_per_document_version(bad_corpus, policy):
    cfg = CleaningConfig(invalid_utf8=policy, max_doc_bytes=50_000)
    files = list_input_files([str(bad_corpus[0])], "auto", [])
    for unit in plan_work_units(files, 1 << 20, shuffle_seed=0):
        for part in unit:
            read = read_file_part(part, "text")
            batch = clean_documents(read.raws, read.read_errors, cfg)
            one_by_one = [clean_document(r, e, cfg) for r, e in zip(read.raws, read.read_errors)]
            assert list(zip(batch.texts, batch.reasons, batch.actions)) == one_by_one


def test_truncation_never_splits_a_character():
    raw = ("é" * 10).encode()  # 2 bytes per character
    text, reason, action = clean_document(raw, None, CleaningConfig(max_doc_bytes=5, oversize="truncate"))
    assert text == "éé".encode() and (reason, action) == ("oversize", "repaired")


def test_repair_replaces_invalid_bytes():
    text, reason, _ = clean_document(b"ab\xffcd", None, CleaningConfig(invalid_utf8="repair"))
    assert text == "ab\ufffdcd".encode() and reason == "invalid_utf8"


def test_compressed_text_files_decode(tmp_path):
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"hello gzip\n"))
    (part,) = plan_work_units(list_input_files([str(tmp_path)], "auto", []), 1 << 20, 0)[0]
    assert part.compression == "gzip"
    assert read_file_part(part, "text").raws == [b"hello gzip\n"]


def test_a_file_that_fails_to_decompress_still_has_its_hash(tmp_path):
    """The manifest hashes inputs as stored; a corrupt archive is reported and still identified."""
    stored = gzip.compress(b"hello world\n" * 50)[:-30] + b"garbage!"
    (tmp_path / "corrupt.txt.gz").write_bytes(stored)
    (part,) = plan_work_units(list_input_files([str(tmp_path)], "auto", []), 1 << 20, 0)[0]
    read = read_file_part(part, "text")
    assert read.read_errors[0].startswith("read_error:")
    assert read.part_sha256 == hashlib.sha256(stored).hexdigest()


@pytest.mark.parametrize("unit_bytes", [7, 50, 333, 10_000])
def test_jsonl_byte_ranges_neither_drop_nor_duplicate_lines(tmp_path, unit_bytes):
    lines = [json.dumps({"text": f"doc {i} " + "w" * (i % 37)}) for i in range(60)]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    units = plan_work_units(list_input_files([str(path)], "auto", []), unit_bytes, shuffle_seed=0)
    got = {}
    for unit in units:
        for part in unit:
            read = read_file_part(part, "text")
            got.update(zip(read.doc_ids, read.raws))
    assert sorted(got.values()) == sorted(json.loads(line)["text"].encode() for line in lines)
    assert len(got) == 60


def test_missing_input_is_loud(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list_input_files([str(tmp_path / "nope")], "auto", [])


def test_read_errors_do_not_raise(tmp_path):
    part = FilePart(str(tmp_path / "gone.txt"), "text", "none", 0, 10, 10)
    read = read_file_part(part, "text")
    assert read.read_errors[0].startswith("read_error:")


def test_names_and_ids_are_relative_to_the_input_root(tmp_path):
    """Ids do not name the corpus' folder; several inputs are named below their common folder (unique)."""
    for sub in ("en", "de"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        (tmp_path / "data" / sub / "part-0.jsonl").write_text(json.dumps({"text": sub}) + "\n")
    (tmp_path / "single.txt").write_text("x")
    both = [str(tmp_path / "data" / "en"), str(tmp_path / "data" / "de") + "/"]
    assert input_root(both) == str(tmp_path / "data") + "/"
    files = list_input_files(both, "auto", [])
    assert [f.name for f in files] == ["de/part-0.jsonl", "en/part-0.jsonl"]
    ids = [d for unit in plan_work_units(files, 1 << 20, 0) for part in unit for d in read_file_part(part, "text").doc_ids]
    assert sorted(ids) == ["de/part-0.jsonl#0", "en/part-0.jsonl#0"]
    assert [f.name for f in list_input_files([both[0]], "auto", [])] == ["part-0.jsonl"]
    assert [f.name for f in list_input_files([str(tmp_path / "single.txt")], "auto", [])] == ["single.txt"]
    with pytest.raises(ValueError, match="twice"):  # one file under two spellings would be read twice
        list_input_files([str(tmp_path / "data"), str(tmp_path / "data") + "//"], "auto", [])
