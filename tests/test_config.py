"""The dataset configuration: the demo's file is valid, mistakes are reported with their path."""

from pathlib import Path

import pytest

from thresher.config import ConfigError, DatasetConfig, load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.yaml"
    path.write_text(text)
    return path


def test_demo_configuration_is_valid() -> None:
    config = load_config(DEMO)
    assert config.name == "thresher-demo"
    assert config.dedup.minhash.threshold == 0.8
    assert {r.kind for r in config.synthesis.recipes} == {
        "instruction_template",
        "multi_turn",
        "system_prompt",
    }
    assert set(config.format.templates) >= {"llama3", "chatml"}


def test_unknown_key_is_an_error_naming_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dedup\.minhash\.treshold"):
        load_config(write(tmp_path, "name: x\ndedup:\n  minhash:\n    treshold: 0.9\n"))


def test_out_of_range_value_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dedup\.minhash\.threshold"):
        load_config(write(tmp_path, "name: x\ndedup:\n  minhash:\n    threshold: 1.5\n"))


def test_split_ratios_must_sum_to_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(write(tmp_path, "name: x\nformat:\n  splits: {train: 0.8, test: 0.1}\n"))


def test_unknown_template_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown template"):
        load_config(write(tmp_path, "name: x\nformat:\n  templates: [llama3, no-such-model]\n"))


def test_invalid_yaml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_run_overrides_merge_into_one_section_and_are_validated() -> None:
    config = load_config(DEMO)
    tuned = config.with_overrides("dedup", {"minhash": {"threshold": 0.9}, "exact": None})
    assert tuned.dedup.minhash.threshold == 0.9
    assert tuned.dedup.minhash.num_perm == config.dedup.minhash.num_perm
    assert tuned.dedup.exact == config.dedup.exact
    assert tuned.fingerprint() != config.fingerprint()
    with pytest.raises(ConfigError, match="threshold"):
        config.with_overrides("dedup", {"minhash": {"threshold": -1}})


def test_defaults_make_a_usable_configuration() -> None:
    config = DatasetConfig(name="minimal")
    assert config.format.splits == {"train": 0.9, "test": 0.1}
    assert config.fingerprint() == DatasetConfig(name="minimal").fingerprint()
