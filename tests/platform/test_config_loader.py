"""The job-spec loader: precedence, type checks, unknown keys, presets, list items, docstrings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
from forge_platform.config_loader import ConfigError, describe, field_docs, flatten, load_config
from forge_platform.config_sections import OptimConfig, StageConfig


@dataclass
class Inner:
    width: int = 8
    """Width."""
    kind: Literal["a", "b"] = "a"
    """Kind."""

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ValueError(f"width = {self.width}: must be > 0")


@dataclass
class Outer:
    name: str = "x"
    """Name."""
    lr: float = 1e-3
    """Learning rate."""
    tags: list[str] = field(default_factory=list)
    """Tags."""
    limit: Optional[int] = None
    """Limit."""
    sizes: list[int] = field(default_factory=list)
    """Sizes."""
    ratios: list[float] = field(default_factory=list)
    """Ratios."""
    inner: Inner = field(default_factory=Inner)
    """Inner section."""
    items: list[Inner] = field(default_factory=lambda: [Inner(), Inner(width=2)])
    """Items."""


PRESETS = {Inner: lambda name: {"wide": Inner(width=64, kind="b")}[name]}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_precedence_cli_over_file_over_defaults(tmp_path: Path) -> None:
    spec = write(tmp_path, 'name = "file"\nlr = 0.5\n[inner]\nwidth = 16\n')
    cfg = load_config(Outer, spec, ["--lr", "3e-4", "--inner.kind=b"])
    assert cfg.name == "file"  # file over default
    assert cfg.lr == 3e-4  # command line over file
    assert cfg.inner == Inner(width=16, kind="b")
    assert load_config(Outer).lr == 1e-3  # defaults alone


def test_unknown_key_is_an_error_with_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"inner\.widht: unknown key.*did you mean 'width'"):
        load_config(Outer, write(tmp_path, "[inner]\nwidht = 3\n"))
    with pytest.raises(ConfigError, match=r"nmae: unknown key"):
        load_config(Outer, None, ["--nmae", "y"])


def test_wrong_type_names_field_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"inner\.width = 'wide': expected int, got str"):
        load_config(Outer, write(tmp_path, '[inner]\nwidth = "wide"\n'))
    with pytest.raises(ConfigError, match=r"lr = 'fast': expected float"):
        load_config(Outer, None, ["--lr", "fast"])
    with pytest.raises(ConfigError, match=r"inner\.width = True: expected int"):
        load_config(Outer, None, ["--inner.width", "true"])


def test_literal_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"inner\.kind = 'c': must be one of 'a', 'b'"):
        load_config(Outer, None, ["--inner.kind", "c"])


def test_post_init_errors_carry_the_path() -> None:
    with pytest.raises(ConfigError, match=r"^inner: width = -1: must be > 0"):
        load_config(Outer, None, ["--inner.width", "-1"])


def test_int_is_accepted_for_float_and_strings_stay_strings() -> None:
    cfg = load_config(Outer, None, ["--lr", "1", "--name", "123", "--limit", "none", "--tags", "a,b"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.name == "123"
    assert cfg.limit is None
    assert cfg.tags == ["a", "b"]


def test_comma_lists_take_their_item_type() -> None:
    # `--eval.phonebook_lengths 4096,16384` as jobs.evaluate's docstring shows: each item is read
    # as its field's type (it was kept as text, and the int check refused "4096").
    cfg = load_config(Outer, None, ["--sizes", "4096,16384", "--ratios", "0.5,1,2e0", "--tags", "1,2"])
    assert cfg.sizes == [4096, 16384]
    assert cfg.ratios == [0.5, 1.0, 2.0] and all(isinstance(r, float) for r in cfg.ratios)
    assert cfg.tags == ["1", "2"]
    assert load_config(Outer, None, ["--sizes", "[1, 2]"]).sizes == [1, 2]
    with pytest.raises(ConfigError, match=r"sizes\.1 = 'x': expected int, got str"):
        load_config(Outer, None, ["--sizes", "1,x"])


def test_list_items_are_addressed_by_index(tmp_path: Path) -> None:
    cfg = load_config(Outer, None, ["--items.1.width", "5"])
    assert [i.width for i in cfg.items] == [8, 5]
    spec = write(tmp_path, "[[items]]\nwidth = 3\n[[items]]\nkind = 'b'\n")
    cfg = load_config(Outer, spec, ["--items.1.width", "7"])
    assert cfg.items == [Inner(width=3), Inner(width=7, kind="b")]
    with pytest.raises(ConfigError, match=r"items\.5: no such item"):
        load_config(Outer, None, ["--items.5.width", "1"])


def test_presets_then_overrides(tmp_path: Path) -> None:
    cfg = load_config(Outer, write(tmp_path, '[inner]\npreset = "wide"\nkind = "a"\n'), presets=PRESETS)
    assert cfg.inner == Inner(width=64, kind="a")
    with pytest.raises(ConfigError, match=r"inner\.preset = 'narrow'"):
        load_config(Outer, None, ["--inner.preset", "narrow"], presets=PRESETS)


def test_bad_files_and_overrides_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Outer, write(tmp_path, "name = \n"))
    with pytest.raises(ConfigError, match="has no value"):
        load_config(Outer, None, ["--lr"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(Outer, None, ["lr", "1"])


def test_stage_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"optim\.min_lr = 0\.5: must be in \[0, lr="):
        load_config(StageConfig, None, ["--optim.min_lr", "0.5"])
    with pytest.raises(ConfigError, match=r"train\.zero_stage = 4: must be one of 0, 1, 2, 3"):
        load_config(StageConfig, None, ["--train.zero_stage", "4"])


def test_flatten_and_describe() -> None:
    flat = flatten(load_config(StageConfig))
    assert flat["optim.lr"] == OptimConfig().lr
    lines = describe(StageConfig)
    assert any(line.strip().startswith("--optim.lr (default 0.0003): Peak learning rate") for line in lines)
    assert field_docs(Inner) == {"width": "Width.", "kind": "Kind."}


def _all_dataclasses(root: type, seen: set[type]) -> set[type]:
    import typing

    if root in seen:
        return seen
    seen.add(root)
    for hint in typing.get_type_hints(root).values():
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate):
                _all_dataclasses(candidate, seen)
    return seen


def test_every_job_config_field_has_a_docstring() -> None:
    from forge_platform.job_config import JOB_CONFIGS

    missing = []
    for job in JOB_CONFIGS.values():
        for cls in _all_dataclasses(job, set()):
            docs = field_docs(cls)
            missing += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing, f"fields without a docstring: {missing}"
