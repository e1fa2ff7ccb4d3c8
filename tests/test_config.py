"""Settings: defaults, files, overrides, errors, and `config show` round trips."""

import pytest

from cityscapes_lab.cli import main
from cityscapes_lab.config import Config, format_config, load_config
from cityscapes_lab.errors import ConfigError


def test_defaults_are_the_studys():
    config = Config()
    assert (config.train.epochs, config.train.batch_size, config.train.lr, config.train.weight_decay) == (
        50, 32, 0.003, 1e-4)
    assert (config.study.runs, config.study.models, config.study.top_k) == (3, 10, 4)
    assert config.aldt.copies == 9 and config.aldt.contrast == [0.6, 1.4]


def test_file_then_overrides(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[train]\nepochs = 7\nlr = 1\n[study]\nruns = 2\n")
    config = load_config(path, ["train.epochs=9", "aldt.contrast=0.9,1.1", "train.compile=true"])
    assert config.train.epochs == 9 and config.train.lr == 1.0 and config.study.runs == 2
    assert config.aldt.contrast == [0.9, 1.1] and config.train.compile is True


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown setting train.epoch"),
    ("trian.epochs=3", "unknown section"),
    ("train.epochs=abc", "expected int"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.precision=fp8", "precision must be"),
    ("epochs=3", "expected section.key=value"),
    ("aldt.contrast=1.5,1.0", "low <= high"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nbatchsize = 3\n")
    with pytest.raises(ConfigError, match="unknown setting train.batchsize"):
        load_config(unknown)
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text('[train]\nepochs = "many"\n')
    with pytest.raises(ConfigError, match="is not a int"):
        load_config(wrong_type)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_config_show_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["config", "show", "--set", "train.epochs=4", "--set", "study.eval_splits=val,test", "--set",
              'train.model_options={"backbone_weights": "r 50.pth", "depths": [1, 2], "key-2": true}'])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "epochs = 4  # epochs (config.ini NUM_EPOCHS)" in text
    assert 'model_options = {backbone_weights = "r 50.pth", depths = [1, 2], key-2 = true}' in text  # TOML
    saved = tmp_path / "shown.toml"
    saved.write_text(text)
    reloaded = load_config(saved)
    assert reloaded == load_config(overrides=["train.epochs=4", "study.eval_splits=val,test",
                                              'train.model_options={"backbone_weights": "r 50.pth", '
                                              '"depths": [1, 2], "key-2": true}'])
    assert format_config(reloaded) == text


def test_cli_refuses_a_bad_setting_in_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["config", "show", "--set", "train.lr=-1"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.strip() == "error: train.lr must be > 0"


def test_binary_and_non_utf8_files_are_one_line_and_a_bom_is_fine(tmp_path, capsys):
    from oneline import expect_error

    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00\x08\x00" + bytes(range(256)))
    expect_error(["config", "show", "--config", binary], capsys, str(binary), "binary file")
    latin = tmp_path / "latin.toml"
    latin.write_bytes("# réglages\n[train]\nepochs = 3\n".encode("latin-1"))
    expect_error(["config", "show", "--config", latin], capsys, str(latin), "not UTF-8", "0xe9")
    with_bom = tmp_path / "bom.toml"
    with_bom.write_bytes("\ufeff[train]\nepochs = 3\n".encode())
    assert load_config(with_bom).train.epochs == 3


def test_list_defaults_are_not_shared_between_instances():
    first = Config()
    first.aldt.contrast.append(9.0)
    first.study.eval_splits.clear()
    fresh = Config()
    assert fresh.aldt.contrast == [0.6, 1.4] and fresh.study.eval_splits == Config().study.eval_splits != []


def test_the_shipped_semi_supervised_recipe_is_valid_settings():
    """configs/ssl-supervised.toml (README: the supervised baseline of the semi-supervised benchmark) loads as
    settings, with the values the README states."""
    from pathlib import Path

    recipe = load_config(Path(__file__).parents[1] / "configs" / "ssl-supervised.toml")
    train = recipe.train
    assert (train.optimizer, train.lr, train.batch_size, train.lr_reference_batch, train.epochs) == ("sgd", 0.005, 8, 8, 240)
    assert (train.loss, train.ohem_threshold, train.ohem_min_kept, train.schedule) == ("ohem", 0.7, 200_000, "poly")
    assert recipe.online.crop == [801, 801] and recipe.online.scale == [0.5, 2.0]
