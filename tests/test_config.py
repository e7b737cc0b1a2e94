import pytest
import yaml

from ssd.config import ConfigError, load_config, load_config_from_dict, merge_overrides


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_overrides_only_what_it_names(tmp_path):
    cfg = load_config(_write(tmp_path, "solver:\n  lr: 0.01\n"))
    assert cfg.solver.lr == 0.01
    assert cfg.solver.momentum == 0.9  # untouched default
    assert cfg.model.priors.steps == [8, 16, 32, 64, 100, 300]


def test_cli_overrides_are_parsed_as_yaml():
    cfg = load_config("configs/voc300.yaml", overrides=[
        "solver.lr=0.002", "model.num_classes=21", "solver.lr_steps=[10, 20]",
        "model.pretrained=null", "train.amp=true",
    ])
    assert cfg.solver.lr == 0.002
    assert cfg.solver.lr_steps == [10, 20]
    assert cfg.model.pretrained is None
    assert cfg.train.amp is True


def test_int_accepted_for_float():
    cfg = load_config(overrides=["solver.lr=1"])
    assert cfg.solver.lr == 1.0 and isinstance(cfg.solver.lr, float)


def test_base_file_is_inherited():
    cfg = load_config("configs/voc512.yaml")
    assert cfg.model.image_size == 512
    assert cfg.solver.max_iter == 120000  # from voc300.yaml via _base_


def test_unknown_key_names_key_file_and_closest(tmp_path):
    path = _write(tmp_path, "solver:\n  momentun: 0.8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "solver.momentun" in message and str(path) in message
    assert "did you mean 'solver.momentum'" in message


def test_unknown_top_level_key_from_override():
    with pytest.raises(ConfigError, match=r"'modle'.*override 'modle.num_classes=3'.*did you mean 'model'"):
        load_config(overrides=["modle.num_classes=3"])


def test_wrong_type_names_key_expected_and_given(tmp_path):
    path = _write(tmp_path, "solver:\n  max_iter: fast\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "solver.max_iter" in message and "expects int" in message and "'fast'" in message
    assert str(path) in message


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="train.seed.*expects int.*True"):
        load_config(overrides=["train.seed=true"])


def test_section_given_a_scalar():
    with pytest.raises(ConfigError, match="'solver'.*must be a mapping"):
        load_config(overrides=["solver=3"])


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match="loss.name.*multibox, focal.*'hinge'"):
        load_config(overrides=["loss.name=hinge"])


def test_inconsistent_prior_lengths():
    with pytest.raises(ConfigError, match="one entry per feature map"):
        load_config(overrides=["model.priors.steps=[8, 16]"])


def test_class_count_must_match_class_names():
    with pytest.raises(ConfigError, match="num_classes.*is 21.*lists 2 classes.*expected .* 3"):
        load_config(overrides=["data.class_names=[cat, dog]"])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["solver.lr"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "solver: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_dump_round_trip_and_copy_semantics():
    cfg = load_config("configs/shapes.yaml", overrides=["solver.lr=0.5"])
    restored = load_config_from_dict(yaml.safe_load(cfg.dump()))
    assert restored == cfg
    as_dict = cfg.to_dict()
    as_dict["solver"]["lr"] = 9.0
    assert cfg.solver.lr == 0.5  # to_dict is a copy
    with pytest.raises(AttributeError):
        cfg.solver.lr = 1.0
    assert merge_overrides(cfg, ["solver.lr=0.1"]).solver.lr == 0.1
