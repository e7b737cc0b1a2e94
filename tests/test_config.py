from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS

from ssd.config import ConfigError, load_config, load_config_from_dict, merge_overrides


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_overrides_only_what_it_names(tmp_path):
    cfg = load_config(_write(tmp_path, "solver:\n  lr: 0.01\n"))
    assert cfg.solver.lr == 0.01
    assert cfg.solver.momentum == 0.9  # untouched default
    assert cfg.model.priors.steps is None  # untouched default: derived from the backbone


def test_cli_overrides_are_parsed_as_yaml():
    cfg = load_config(CONFIGS / "voc300.yaml", overrides=[
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
    cfg = load_config(CONFIGS / "voc512.yaml")
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
        load_config(overrides=["model.priors.steps=[8, 16]", "model.priors.min_sizes=[8, 16, 32]"])


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
    cfg = load_config(CONFIGS / "shapes.yaml", overrides=["solver.lr=0.5"])
    restored = load_config_from_dict(yaml.safe_load(cfg.dump()))
    assert restored == cfg
    as_dict = cfg.to_dict()
    as_dict["solver"]["lr"] = 9.0
    assert cfg.solver.lr == 0.5  # to_dict is a copy
    with pytest.raises(AttributeError):
        cfg.solver.lr = 1.0
    assert merge_overrides(cfg, ["solver.lr=0.1"]).solver.lr == 0.1


# --- numeric ranges and list forms --------------------------------------------------------------


@pytest.mark.parametrize("override, expected", [
    ("solver.max_iter=0", "'solver.max_iter' must be >= 1, got 0"),
    ("train.checkpoint_period=0", "'train.checkpoint_period' must be >= 1, got 0"),
    ("train.log_period=0", "'train.log_period' must be >= 1, got 0"),
    ("train.eval_period=-1", "'train.eval_period' must be >= 0, got -1"),
    ("train.keep_checkpoints=0", "'train.keep_checkpoints' must be >= 1, got 0"),
    ("train.keep_checkpoints=-1", "'train.keep_checkpoints' must be >= 1, got -1"),
    ("test.nms_threshold=0", "'test.nms_threshold' must be in (0, 1], got 0.0"),
    ("test.nms_threshold=1.5", "'test.nms_threshold' must be in (0, 1], got 1.5"),
    ("test.score_threshold=1.5", "'test.score_threshold' must be in [0, 1], got 1.5"),
    ("test.score_threshold=-0.1", "'test.score_threshold' must be in [0, 1], got -0.1"),
    ("solver.lr=0", "'solver.lr' must be > 0, got 0.0"),
    ("solver.batch_size=0", "'solver.batch_size' must be >= 1, got 0"),
    ("solver.momentum=1", "'solver.momentum' must be in [0, 1), got 1.0"),
    ("loss.iou_threshold=0", "'loss.iou_threshold' must be in (0, 1], got 0.0"),
    ("test.top_k=0", "'test.top_k' must be >= 1, got 0"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0, got -1"),
    ("model.num_classes=1", "'model.num_classes' must be >= 2, got 1"),
    ("model.variances=[0.1]", "'model.variances' must be a list of 2 floats > 0, got [0.1] (1 values)"),
    ("model.variances=[0.1, 0]", "'model.variances' must be a list of 2 floats > 0; item 1 is 0"),
    ("data.mean=[104, 117]", "'data.mean' must be a list of 3 floats, got [104, 117] (2 values)"),
    ("model.priors.feature_maps=[38, a, 10, 5, 3, 1]",
     "'model.priors.feature_maps' must be a list of ints >= 1; item 1 is str 'a'"),
    ("model.priors.steps=[8, 16, 32, 64, 100, -300]",
     "'model.priors.steps' must be a list of floats > 0; item 5 is -300"),
    ("model.priors.aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], two]",
     "'model.priors.aspect_ratios' must be one list of positive numbers per feature map"),
    ("data.train_sets=[2007, trainval]",
     "'data.train_sets' must be a list of [year, split] pairs, e.g. [[2007, trainval], "
     "[2012, trainval]]; got [2007, 'trainval']"),
    ("data.test_sets=[[2007, test, extra]]", "'data.test_sets' must be a list of [year, split] pairs"),
])
def test_out_of_range_values_name_the_key_and_the_range(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert expected in str(err.value)


def test_range_end_points_that_are_allowed():
    cfg = load_config(overrides=["train.eval_period=0", "test.nms_threshold=1", "test.score_threshold=0",
                                 "solver.max_iter=1", "train.keep_checkpoints=1", "train.log_period=1"])
    assert (cfg.train.eval_period, cfg.test.nms_threshold, cfg.test.score_threshold) == (0, 1.0, 0.0)


def test_yaml_1_1_exponent_strings_are_read_as_floats(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 without a dot as the string "1e-3"
    path = _write(tmp_path, "solver:\n  lr: 1e-3\n  weight_decay: 5e-4\nmodel:\n  variances: [1e-1, 2e-1]\n")
    assert yaml.safe_load(path.read_text())["solver"]["lr"] == "1e-3"
    cfg = load_config(path)
    assert cfg.solver.lr == 0.001 and isinstance(cfg.solver.lr, float)
    assert cfg.solver.weight_decay == 0.0005 and cfg.model.variances == [0.1, 0.2]
    with pytest.raises(ConfigError, match="'solver.lr' .* expects float, got str 'fast'"):
        load_config(overrides=["solver.lr=fast"])


def test_backbone_and_loss_names_come_from_their_registries():
    from ssd.loss import LOSSES
    from ssd.modeling import BACKBONES

    with pytest.raises(ConfigError) as err:
        load_config(overrides=["model.backbone=vgg19"])
    assert f"must be one of {', '.join(BACKBONES)}, got 'vgg19'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["loss.name=hinge"])
    assert f"must be one of {', '.join(LOSSES)}, got 'hinge'" in str(err.value)


# --- relative paths ---------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_file_that_sets_them(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs" / "base").mkdir(parents=True)
    _write(project / "configs" / "base", "data:\n  root: ../../data/VOCdevkit\n", "base.yaml")
    child = _write(project / "configs", "_base_: base/base.yaml\nmodel:\n  pretrained: weights/vgg.pth\n"
                                        "train:\n  output_dir: ../runs/x\n", "child.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(child)
    assert cfg.data.root == str(project / "data" / "VOCdevkit")  # set by base.yaml, next to it
    assert cfg.model.pretrained == str(project / "configs" / "weights" / "vgg.pth")
    assert cfg.train.output_dir == str(project / "runs" / "x")
    # values no file sets are relative to the working directory: defaults and overrides
    assert load_config(overrides=["data.root=mine"]).data.root == str(elsewhere / "mine")
    assert load_config().train.output_dir == str(elsewhere / "runs" / "ssd")


def test_repository_configs_mean_the_same_folders_from_any_directory(tmp_path, monkeypatch):
    from_root = load_config(CONFIGS / "shapes.yaml")
    monkeypatch.chdir(tmp_path)
    from_elsewhere = load_config(CONFIGS / "shapes.yaml")
    assert from_root == from_elsewhere
    assert from_elsewhere.data.root == str(CONFIGS.parent / "data" / "shapes")
    assert from_elsewhere.train.output_dir == str(CONFIGS.parent / "runs" / "shapes")


def test_a_dumped_config_keeps_its_absolute_paths_in_another_directory(tmp_path, monkeypatch):
    cfg = load_config(CONFIGS / "voc300.yaml")
    stored = yaml.safe_load(cfg.dump())
    monkeypatch.chdir(tmp_path)
    restored = load_config_from_dict(stored)
    assert restored.data.root == cfg.data.root == str(CONFIGS.parent / "data" / "VOCdevkit")
    assert restored.model.pretrained == str(CONFIGS.parent / "weights" / "vgg16_reducedfc.pth")


# --- configs stored in checkpoints ------------------------------------------------------------------


def test_checkpoint_config_with_a_key_this_version_does_not_know_still_loads(caplog):
    from ssd.config import load_checkpoint_config

    stored = load_config(CONFIGS / "shapes.yaml").to_dict()
    del stored["version"]  # written before configs had a version
    stored["data"]["prefetch_images"] = True  # a key this version does not know
    stored["retired_section"] = {"x": 1}
    with caplog.at_level("WARNING", logger="ssd.config"):
        cfg = load_checkpoint_config(stored, source="the config stored in old.pth")
    assert cfg.model.backbone == "ssd7" and cfg.data.shapes.num_train == 5000
    assert "old.pth" in caplog.text and "data.prefetch_images" in caplog.text
    assert "retired_section" in caplog.text
    # the same key in a user's YAML is still an error with a suggestion
    with pytest.raises(ConfigError, match="Unknown config key 'data.prefetch_images'"):
        load_config_from_dict(stored)


def test_checkpoint_config_keys_are_renamed_by_the_migration_table(monkeypatch):
    import ssd.config as config

    current = config.CONFIG_VERSION
    monkeypatch.setattr(config, "CONFIG_VERSION", current + 1)
    monkeypatch.setitem(config._DEFAULTS, "version", current + 1)
    monkeypatch.setitem(config._MIGRATIONS, current, config._Migration(
        renamed={"train.ckpt_period": "train.checkpoint_period"}, removed=("train.old_flag",)))
    stored = {"version": current, "train": {"ckpt_period": 123, "old_flag": True}}
    cfg = config.load_checkpoint_config(stored)
    assert cfg.train.checkpoint_period == 123 and cfg.version == current + 1
    assert "old_flag" not in cfg.train


def test_a_user_config_cannot_claim_another_version():
    with pytest.raises(ConfigError, match="'version' is 1"):
        load_config(overrides=["version=1"])


def test_a_registered_loss_is_validated_and_built_from_its_own_signature(monkeypatch):
    from torch import nn

    from ssd.loss import LOSSES, build_loss

    class ToyLoss(nn.Module):
        def __init__(self, num_classes, variances, gamma, loc_weight=1.0):
            super().__init__()
            self.settings = (num_classes, variances, gamma, loc_weight)

    monkeypatch.setitem(LOSSES, "toy", ToyLoss)
    cfg = load_config(overrides=["loss.name=toy", "loss.gamma=3", "loss.loc_weight=0.5"])
    assert build_loss(cfg).settings == (21, (0.1, 0.2), 3.0, 0.5)


def test_one_rule_for_class_names():
    from ssd.data import SHAPES_CLASSES, class_names_for, configured_class_names
    from ssd.data.voc import VOC_CLASSES
    from ssd.predictor import class_names_for as predictor_names

    assert predictor_names is class_names_for
    voc, shapes = load_config(CONFIGS / "voc300.yaml"), load_config(CONFIGS / "shapes.yaml")
    coco = load_config(CONFIGS / "coco300.yaml")
    assert class_names_for(voc) == configured_class_names(voc) == list(VOC_CLASSES)
    assert class_names_for(shapes) == list(SHAPES_CLASSES)
    assert configured_class_names(coco) is None  # the annotation file names them
    assert class_names_for(coco) == [f"class_{label}" for label in range(80)]
    seven = load_config(overrides=["model.num_classes=8"])  # VOC format, 7 classes, no names
    assert class_names_for(seven) == [f"class_{label}" for label in range(7)]
    named = load_config(overrides=["model.num_classes=3", "data.class_names=[cat, dog]"])
    assert class_names_for(named) == configured_class_names(named) == ["cat", "dog"]


def test_the_torchvision_keyword_of_model_pretrained_is_not_a_path(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  pretrained: torchvision\n")
    assert load_config(config).model.pretrained == "torchvision"


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_repository_configs_write_outside_the_configs_folder(config):
    """Paths in a config are relative to its file: `runs/x` there would mean configs/runs/x."""
    cfg = load_config(config)
    for value in (cfg.train.output_dir, cfg.data.root):
        assert not Path(value).resolve().is_relative_to(CONFIGS.resolve()), value


# ------------------------------------------------------------------ conflicts and bad values
@pytest.mark.parametrize("text, key, lines", [
    ("solver:\n  lr: 0.01\nsolver:\n  max_iter: 5\n", "solver", (1, 3)),
    ("_base_: a.yaml\n_base_: b.yaml\n", "_base_", (1, 2)),
    ("solver:\n  lr: 0.01\n  momentum: 0.8\n  lr: 0.02\n", "lr", (2, 4)),
])
def test_a_key_set_twice_names_the_key_the_file_and_both_lines(tmp_path, text, key, lines):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (f"Config file {path}, line {lines[1]}: key '{key}' is set twice in one mapping "
            f"(first on line {lines[0]})") in str(err.value)


def test_a_key_set_twice_in_an_override_value_is_refused():
    with pytest.raises(ConfigError, match="key 'clip' appears twice"):
        load_config(overrides=["model.priors={clip: true, clip: false}"])


def test_a_yaml_merge_may_still_override_the_keys_it_brings(tmp_path):
    cfg = load_config(_write(tmp_path, "test:\n  <<: {top_k: 50, batch_size: 4}\n  top_k: 20\n"))
    assert (cfg.test.top_k, cfg.test.batch_size) == (20, 4)


@pytest.mark.parametrize("override, expected", [
    ("model.variances=[.inf, 0.2]", "'model.variances' must be a list of 2 floats > 0 (finite "
                                    "numbers); item 0 is inf"),
    ("model.variances=[0.1, .nan]", "'model.variances' must be a list of 2 floats > 0 (finite "
                                    "numbers); item 1 is nan"),
    ("data.mean=[104, .inf, 123]", "'data.mean' must be a list of 3 floats (finite numbers); item 1"),
    ("model.priors.steps=[8, 16, 32, 64, 100, .inf]", "'model.priors.steps'"),
    ("model.priors.aspect_ratios=[[2], [2, 3], [2, .inf], [2, 3], [2], [2]]",
     "'model.priors.aspect_ratios' must be one list of positive numbers per feature map (finite"),
    ("solver.lr=.inf", "'solver.lr' (in override 'solver.lr=.inf') expects a finite number, got inf"),
    ("solver.lr=nan", "'solver.lr' (in override 'solver.lr=nan') expects a finite number, got nan"),
    ("data.augmentation.max_expand=.inf", "'data.augmentation.max_expand' (in override "
                                          "'data.augmentation.max_expand=.inf') expects a finite"),
    ("solver.clip_grad_norm=.inf", "'solver.clip_grad_norm' (in override"),
])
def test_non_finite_numbers_are_refused_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert expected in str(err.value)


@pytest.mark.parametrize("override, expected", [
    ("data.num_workers=1000000000", "'data.num_workers' is 1000000000: at most 64 loader processes "
                                    "(each holds a copy of the data set"),
    ("model.image_size=100000", "'model.image_size' is 100000: at most 2048 px (memory grows with the "
                                "square of the size: the first VGG16 stage alone holds 64 x 100000 "
                                "x 100000 float32 values per image, 2,384.2 GiB)"),
    ("data.shapes.image_size=5000", "'data.shapes.image_size' is 5000: at most 2048 px (memory grows"),
    ("solver.batch_size=100000", "'solver.batch_size' is 100000: at most 4096 images per global batch"),
    ("test.batch_size=100000", "'test.batch_size' is 100000: at most 4096 images per batch"),
    ("data.shapes.num_train=1000000000", "'data.shapes.num_train' is 1000000000: at most 1000000 "
                                         "generated images"),
])
def test_resource_keys_have_bounds_that_name_what_they_protect(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert expected in str(err.value)


def test_resource_bounds_themselves_are_allowed():
    cfg = load_config(overrides=["data.num_workers=64", "model.image_size=2048",
                                 "solver.batch_size=4096", "data.num_workers=auto"])
    assert (cfg.model.image_size, cfg.solver.batch_size, cfg.data.num_workers) == (2048, 4096, "auto")


# ------------------------------------------------------------------ _base_
@pytest.mark.parametrize("files, start", [
    ({"a.yaml": "_base_: a.yaml\n"}, "a.yaml"),
    ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "_base_: a.yaml\n"}, "a.yaml"),
    ({"a.yaml": "_base_: [c.yaml, b.yaml]\n", "b.yaml": "_base_: a.yaml\n", "c.yaml": "{}\n"}, "a.yaml"),
])
def test_a_base_cycle_is_one_error_naming_the_files(tmp_path, files, start):
    for name, text in files.items():
        _write(tmp_path, text, name)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / start)
    message = str(err.value)
    assert message.startswith("Config files name each other as _base_ in a cycle: ")
    assert message.count(str(tmp_path / start)) == 2  # where the cycle starts and closes
    assert all(str(tmp_path / name) in message for name in files if name != "c.yaml")


def test_a_list_of_bases_is_merged_in_order_under_the_file(tmp_path):
    _write(tmp_path, "solver: {lr: 0.1, max_iter: 7}\ntest: {top_k: 9}\n", "first.yaml")
    _write(tmp_path, "solver: {lr: 0.2}\n", "second.yaml")
    cfg = load_config(_write(tmp_path, "_base_: [first.yaml, second.yaml]\ntest: {top_k: 5}\n"))
    assert (cfg.solver.lr, cfg.solver.max_iter, cfg.test.top_k) == (0.2, 7, 5)


def test_a_diamond_of_bases_is_not_a_cycle(tmp_path):
    _write(tmp_path, "solver: {max_iter: 7}\n", "root.yaml")
    _write(tmp_path, "_base_: root.yaml\n", "left.yaml")
    _write(tmp_path, "_base_: root.yaml\n", "right.yaml")
    assert load_config(_write(tmp_path, "_base_: [left.yaml, right.yaml]\n")).solver.max_iter == 7


@pytest.mark.parametrize("value", ["3", "[a.yaml, {b: 1}]", "''"])
def test_a_base_that_is_no_file_name_is_refused(tmp_path, value):
    path = _write(tmp_path, f"_base_: {value}\n")
    with pytest.raises(ConfigError, match=f"Config key '_base_' in {path} must be a config file "
                                          "name or a list of them"):
        load_config(path)


@pytest.mark.parametrize("base", ["shapes.yaml", "configs/shapes.yaml"])
def test_base_may_name_a_builtin_config(tmp_path, monkeypatch, base):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "mine"
    folder.mkdir()
    cfg = load_config(_write(folder, f"_base_: {base}\nmodel: {{image_size: 96}}\n"))
    assert (cfg.model.backbone, cfg.model.image_size) == ("ssd7", 96)
    # the built-in config's folders are in the working directory, as with --config shapes.yaml
    assert cfg.data.root == str(tmp_path / "data" / "shapes")


def test_a_base_file_beside_the_yaml_wins_over_the_builtin_config(tmp_path):
    _write(tmp_path, "model: {num_classes: 3}\n", "shapes.yaml")
    cfg = load_config(_write(tmp_path, "_base_: shapes.yaml\n"))
    assert (cfg.model.num_classes, cfg.model.backbone) == (3, "vgg16")


def test_a_missing_base_names_the_file_that_names_it(tmp_path):
    path = _write(tmp_path, "_base_: nope.yaml\n")
    expected = rf"Config file not found: .*nope\.yaml .*; named as _base_ in {path}"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


# --- the score threshold's old name, test.conf_threshold -----------------------------------------


def test_a_checkpoint_config_with_the_old_score_threshold_name_is_migrated_with_a_message(caplog):
    from ssd.config import load_checkpoint_config

    stored = load_config(CONFIGS / "shapes.yaml").to_dict()
    stored["version"] = 2  # written when the key was test.conf_threshold
    del stored["test"]["score_threshold"]
    stored["test"]["conf_threshold"] = 0.2
    with caplog.at_level("INFO", logger="ssd.config"):
        cfg = load_checkpoint_config(stored, source="old.pth")
    assert cfg.test.score_threshold == 0.2 and "conf_threshold" not in cfg.test
    assert "old.pth" in caplog.text and "test.conf_threshold -> test.score_threshold" in caplog.text


def test_the_old_score_threshold_name_in_a_file_or_override_still_works_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path, "test:\n  conf_threshold: 0.25\n")
    with caplog.at_level("WARNING", logger="ssd.config"):
        from_file = load_config(path)
        from_override = load_config(overrides=["test.conf_threshold=0.3"])
    assert (from_file.test.score_threshold, from_override.test.score_threshold) == (0.25, 0.3)
    assert "'test.conf_threshold' (in " + str(path) + ") is deprecated" in caplog.text
    assert "now 'test.score_threshold'" in caplog.text


def test_the_old_and_new_score_threshold_names_together_are_refused(tmp_path):
    path = _write(tmp_path, "test:\n  conf_threshold: 0.25\n  score_threshold: 0.3\n")
    with pytest.raises(ConfigError, match="'test.conf_threshold' and 'test.score_threshold'"):
        load_config(path)


def test_a_base_file_with_the_old_name_is_overridden_by_the_new_name(tmp_path):
    _write(tmp_path, "test:\n  conf_threshold: 0.25\n", name="base.yaml")
    cfg = load_config(_write(tmp_path, "_base_: base.yaml\ntest:\n  score_threshold: 0.3\n"))
    assert cfg.test.score_threshold == 0.3


# --- the schema: one declaration per key -------------------------------------------------------------


def test_every_choice_comes_from_the_registry_that_implements_it():
    from ssd.config_schema import KEYS
    from ssd.data.build import DATASET_BUILDERS
    from ssd.engine.preemption import PREEMPT_SIGNALS
    from ssd.engine.solver import OPTIMIZERS, SCHEDULES
    from ssd.evaluation.dataset_eval import METRICS
    from ssd.loss import LOC_LOSSES, LOSSES
    from ssd.modeling import BACKBONES
    from ssd.precision import BATCH_DTYPES

    choices = {key.name: key.allowed_choices() for key in KEYS if key.choices is not None}
    assert choices == {
        "model.backbone": tuple(BACKBONES), "data.format": tuple(DATASET_BUILDERS),
        "data.batch_dtype": BATCH_DTYPES, "loss.name": tuple(LOSSES), "loss.loc_loss": LOC_LOSSES,
        "solver.optimizer": OPTIMIZERS, "solver.schedule": SCHEDULES, "test.metric": METRICS,
        "train.preempt_signal": PREEMPT_SIGNALS}


def test_every_key_has_one_declaration_with_a_description():
    from ssd.config_schema import KEYS

    names = [key.name for key in KEYS]
    assert len(names) == len(set(names))
    assert all(key.doc for key in KEYS), [key.name for key in KEYS if not key.doc]
    assert all(key.kind is not None for key in KEYS if key.default is None)


def test_the_readme_configuration_table_is_the_schema():
    from ssd.config_schema import markdown_table

    readme = (CONFIGS.parent / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it with: python -m ssd.config_schema"
    assert "| `solver.clip_grad_norm` | null |" in markdown_table()


def test_dump_is_a_config_file_that_loads_back_equal(tmp_path):
    cfg = load_config(CONFIGS / "shapes.yaml", overrides=["test.score_threshold=0.2"])
    assert load_config(_write(tmp_path, cfg.dump())) == cfg
