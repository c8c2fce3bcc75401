"""A campaign's data: the corpus tokenized once, each stage packed from those tokens under its own
long-document policy, and the share of tokens in documents longer than the previous stage's rows.

The campaign's own functions on a small corpus, without Ray (tokenizing in process); the whole
campaign runs end to end in test_campaign_e2e.py.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
from forge_data import DataPipelineConfig, LongContextConfig, TokenizerConfig
from forge_data.tokenizer import train_from_texts

from forge_platform.campaign import check_long_document_settings, describe_stage_data, pack_stage, tokenize_split
from forge_platform.config_loader import ConfigError
from forge_platform.config_sections import StageConfig
from forge_platform.job_config import CampaignConfig, load_job_config

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SPEC = Path(__file__).resolve().parents[2] / "jobs" / "specs" / "demo.toml"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory):
    """Each split of a small corpus (json and email sources, a few very short files) tokenized once."""
    root = tmp_path_factory.mktemp("campaign_data")
    sources = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py"))[:8]
    for split, files in (("train", sources[:-2]), ("val", sources[-2:])):
        (root / split).mkdir()
        for path in files:
            (root / split / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    (root / "train" / "short.txt").write_text("a very short document\n")
    tokenizer = train_from_texts(TokenizerConfig(model_type="bpe", vocab_size=400, show_progress=False),
                                 [p.read_text("utf-8") for p in sources])
    tokenizer_path = tokenizer.save(str(root / "tokenizer"))
    data = DataPipelineConfig(shard_tokens=1 << 14, tokenizer=TokenizerConfig(model_type="bpe", vocab_size=400))
    stores = {split: tokenize_split(data, [str(root / split)], tokenizer_path, root / "tokens" / split, use_ray=False)
              for split in ("train", "val")}
    return root, data, stores


def unit_files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / "tokens").rglob("*") if p.is_file()}


def test_stages_pack_the_tokens_made_once(stores) -> None:
    root, data, stores = stores
    before = unit_files(root)
    assert any(p.suffix == ".parquet" for p in before)
    pretrain = StageConfig(name="pre", seq_len=64)
    extend = StageConfig(name="ext", seq_len=256, long_documents=LongContextConfig(min_doc_tokens=300))
    first = pack_stage(data, pretrain, 0, stores, root / "pre")
    second = pack_stage(data, extend, 64, stores, root / "ext")
    assert unit_files(root) == before  # the stages read the tokens; nothing tokenized them again
    for split in ("train", "val"):
        assert first[split].location["token_store"] == second[split].location["token_store"] == stores[split].root
        assert (first[split].seq_len, second[split].seq_len) == (64, 256)
        assert first[split].long_doc_share is None  # the first stage has no previous length
    assert first["train"].counts["tokens_written"] == sum(u["num_tokens"] for u in stores["train"].units)
    # the policy is the training split's: short documents left out there, held-out data whole
    assert second["train"].rejected_by_reason["long_context_filtered"] >= 1
    assert second["val"].counts["docs_packed"] == first["val"].counts["docs_packed"]
    assert second["train"].long_doc_share == 1.0  # every kept document has >= 300 > 64 tokens
    assert 0 < second["val"].long_doc_share <= 1.0 and second["val"].previous_seq_len == 64
    line = describe_stage_data(extend, second)
    assert "of its tokens sit in documents longer than 64 tokens" in line and "filtered" in line


def test_the_demo_extension_selects_long_documents_and_pretraining_does_not() -> None:
    cfg = load_job_config(CampaignConfig, SPEC, [])
    assert cfg.stages[0].long_documents == LongContextConfig()
    assert cfg.stages[1].long_documents.min_doc_tokens >= cfg.stages[0].seq_len


@pytest.mark.parametrize("overrides, line", [
    (["--stages.1.long_documents.mix_long_share", "1.5"],
     "stages.1.long_documents: data.long_context.mix_long_share = 1.5: must be in [0.0, 1.0]"),
    (["--stages.1.long_documents.upweight_factor", "4"],
     "stages.1.long_documents: data.long_context.upweight_min_tokens = 0: must be >= 1 when upweight_factor = 4"),
])
def test_a_bad_stage_policy_is_refused_in_one_line(overrides, line) -> None:
    with pytest.raises(ConfigError) as err:
        load_job_config(CampaignConfig, SPEC, overrides)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, line", [
    (["--data.long_context.min_doc_tokens", "10"], "data.long_context = LongContextConfig(min_doc_tokens=10"),
    (["--stages.1.long_documents.previous_seq_len", "300"],
     "stages.1.long_documents.previous_seq_len = 300: must be 0 in a campaign"),
])
def test_policies_a_campaign_would_ignore_are_refused(overrides, line) -> None:
    with pytest.raises(ConfigError) as err:
        check_long_document_settings(load_job_config(CampaignConfig, SPEC, overrides))
    assert str(err.value).startswith(line) and "\n" not in str(err.value)
