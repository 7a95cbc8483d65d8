"""Config: defaults, YAML files, dotted overrides, and one clear error per bad value."""

import pytest

from vitmim.config import Config, dump, load_config, pretrain_data
from vitmim.errors import UserError


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = load_config()
    assert cfg == Config()
    path = tmp_path / "c.yaml"
    path.write_text(dump(cfg))
    assert load_config([path]) == cfg


def test_files_then_overrides_in_order(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("pretrain: {mask_ratio: 0.4, epochs: 3}\nmodel: {depth: 4}\n")
    b = tmp_path / "b.yaml"
    b.write_text("base: a.yaml\npretrain: {epochs: 5}\n")
    cfg = load_config(
        [b],
        [
            "pretrain.mask_patch=4",
            "data.classes=[n01443537, n01629819]",
            "finetune.augment.mixup=0.8",
        ],
    )
    assert (cfg.pretrain.mask_ratio, cfg.pretrain.epochs, cfg.model.depth) == (0.4, 5, 4)
    assert cfg.pretrain.mask_patch == 4
    assert cfg.data.classes == ["n01443537", "n01629819"]
    assert cfg.finetune.augment.mixup == 0.8
    assert isinstance(load_config(overrides=["finetune.lr=1"]).finetune.lr, float)


@pytest.mark.parametrize(
    "override,message",
    [
        ("pretrain.mask_ratoi=0.5", "unknown config key pretrain.mask_ratoi"),
        ("nonsense=1", "unknown config key nonsense"),
        ("pretrain.epochs=ten", "pretrain.epochs: expected an integer"),
        ("pretrain.epochs=2.5", "pretrain.epochs: expected an integer"),
        ("pretrain.lr=fast", "pretrain.lr: expected a number"),
        ("model.rezero=maybe", "model.rezero: expected true/false"),
        ("model.arch=resnet", "model.arch: expected one of"),
        ("pretrain.mask_ratio=1.2", "pretrain.mask_ratio: expected a number in (0, 1)"),
        ("pretrain.mask_ratio=0", "pretrain.mask_ratio"),
        ("pretrain.mask_patch=5", "pretrain.mask_patch: 5 px cells must divide"),
        ("model.patch_size=7", "model.patch_size"),
        ("data.label_fraction=0", "data.label_fraction"),
        ("finetune.batch_size=0", "finetune.batch_size"),
        ("pretrain=3", "pretrain: expected a mapping"),
        ("pretrain.mask_ratio", "expected key=value"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(override, message):
    with pytest.raises(UserError) as e:
        load_config(overrides=[override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_config([bad])
    with pytest.raises(UserError, match="missing.yaml: config file not found"):
        load_config([tmp_path / "missing.yaml"])


def test_exponent_without_dot_is_a_number():
    assert load_config(overrides=["pretrain.lr=1e-4"]).pretrain.lr == 1e-4


def test_shipped_presets_load_and_keep_their_measured_recipes():
    from vitmim.config import PRESETS, preset_names

    assert {"smoke", "tin10_long", "tin200"} <= set(preset_names())
    for name in preset_names():
        load_config([PRESETS / f"{name}.yaml"])  # every shipped file validates
    long = load_config([PRESETS / "tin10_long.yaml"])
    # the recipe behind the README's GPU figures: the default model, long schedules, mixing
    assert long.model == Config().model
    assert (long.pretrain.epochs, long.finetune.epochs) == (150, 100)
    assert long.finetune.augment.mixup > 0 and long.finetune.layer_decay < 1
    big = load_config([PRESETS / "tin200.yaml"])
    assert big.data.classes is None and big.model.patch_size == 4


# ---------------------------------------------------------------------------------------------
# the scratch baseline's own recipe


def test_scratch_section_holds_typed_finetune_overrides(tmp_path):
    from vitmim.config import tuned_scratch

    path = tmp_path / "recipe.yaml"
    path.write_text(
        "scratch:\n  finetune.lr: 2e-3\n  finetune:\n    drop_path: 0.0\n"
        "    augment: {mixup: 0.2}\n"
    )
    cfg = load_config([path], ["scratch.finetune.epochs=22"])
    assert cfg.scratch == {
        "finetune.lr": 0.002,
        "finetune.drop_path": 0.0,
        "finetune.augment.mixup": 0.2,
        "finetune.epochs": 22,
    }
    tuned = tuned_scratch(cfg)
    assert (tuned.finetune.lr, tuned.finetune.drop_path, tuned.finetune.epochs) == (0.002, 0.0, 22)
    assert tuned.finetune.augment.mixup == 0.2 and tuned.scratch == cfg.scratch
    assert tuned_scratch(tuned) == tuned  # applying the recipe twice changes nothing
    assert cfg.finetune == Config().finetune  # the pre-trained side's recipe is untouched
    copy = tmp_path / "c.yaml"
    copy.write_text(dump(cfg))
    assert load_config([copy]) == cfg
    assert load_config(overrides=["scratch.finetune.lr=1", "scratch={}"]).scratch == {}


@pytest.mark.parametrize(
    "override,message",
    [
        ("scratch.finetune.lrr=1", "unknown config key scratch.finetune.lrr"),
        ("scratch.finetune.lr=fast", "config key scratch.finetune.lr: expected a number"),
        ("scratch.finetune.augment.mixupp=1", "unknown config key scratch.finetune.augment.mixupp"),
        ("scratch.pretrain.epochs=3", "config key scratch.pretrain.epochs: expected a finetune"),
        ("scratch.finetune.seed=3", "config key scratch.finetune.seed: expected a finetune"),
        ("scratch=3", "config key scratch: expected a mapping"),
        (
            "scratch.finetune.epochs=0",
            "finetune.epochs: expected an integer >= 1, got 0 "
            r"\(in config section scratch\)",
        ),
    ],
)
def test_bad_scratch_recipes_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        load_config(overrides=[override])


def test_bad_scratch_recipe_stops_vitmim_run_before_any_work(tmp_path, capsys):
    from vitmim import cli

    out = tmp_path / "run"
    assert cli.main(["run", "--out", str(out), "--set", "scratch.finetune.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scratch.finetune.lrr" in err and not out.exists()


def test_base_may_list_files_and_share_a_common_one(tmp_path):
    """A diamond (two bases building on one file) is not a cycle; later bases win."""
    (tmp_path / "common.yaml").write_text("model: {depth: 3}\npretrain: {epochs: 7}\n")
    (tmp_path / "a.yaml").write_text("base: common.yaml\npretrain: {epochs: 4}\n")
    (tmp_path / "b.yaml").write_text("base: common.yaml\nfinetune: {epochs: 9}\n")
    (tmp_path / "top.yaml").write_text("base: [a.yaml, b.yaml]\nmodel: {depth: 2}\n")
    cfg = load_config([tmp_path / "top.yaml"])
    assert (cfg.model.depth, cfg.pretrain.epochs, cfg.finetune.epochs) == (2, 7, 9)


def test_base_chains_have_a_depth_limit(tmp_path):
    from vitmim.config import MAX_BASE_DEPTH

    for i in range(MAX_BASE_DEPTH + 2):
        (tmp_path / f"f{i}.yaml").write_text(f"base: f{i + 1}.yaml\n")
    (tmp_path / f"f{MAX_BASE_DEPTH + 2}.yaml").write_text("model: {depth: 2}\n")
    with pytest.raises(UserError, match=f"nest deeper than {MAX_BASE_DEPTH}"):
        load_config([tmp_path / "f0.yaml"])


def test_validate_checks_configs_built_in_python():
    from vitmim.config import validate

    cfg = Config()
    cfg.finetune.augment.erasing = 1.5
    with pytest.raises(
        UserError,
        match=r"finetune.augment.erasing: expected a number in "
        r"\[0, 1\], got 1.5",
    ):
        validate(cfg)
    cfg = Config()
    cfg.pretrain.epochs = True  # a bool is not a count
    with pytest.raises(UserError, match="pretrain.epochs: expected an integer, got true"):
        validate(cfg)


def test_validate_leaves_its_argument_alone():
    from vitmim.config import validate

    cfg = Config(scratch={"finetune.lr": "2e-3"})  # as YAML 1.1 reads 2e-3: text
    checked = validate(cfg)
    assert checked.scratch == {"finetune.lr": 0.002} and cfg.scratch == {"finetune.lr": "2e-3"}
    checked.model.depth = 1
    assert cfg.model.depth == Config().model.depth  # a copy, not shared sections


def test_config_problems_in_files_vitmim_reads_stay_config_errors(tmp_path):
    """A bad value in a run's model.json, a run's config.yaml or a grid spec is a ConfigError
    naming the file, so that ``except vitmim.ConfigError`` sees it."""
    import json

    import yaml

    from vitmim.errors import ConfigError
    from vitmim.lab.grid import load_spec, plan
    from vitmim.lab.report import _read_run_config
    from vitmim.runs import read_model

    run = tmp_path / "run"
    run.mkdir()
    description = {"kind": "classifier", "config": {"model": {"depth": -1}}}
    (run / "model.json").write_text(json.dumps({**description, "classes": [], "class_names": []}))
    with pytest.raises(ConfigError, match=r"model\.json: config key model\.depth"):
        read_model(run)
    (run / "config.yaml").write_text("finetune: {lr: .nan}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: config key finetune\.lr"):
        _read_run_config(run / "config.yaml")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"variants": {"pretrain.mask_patch": [3]}}))
    with pytest.raises(ConfigError, match=r"spec\.yaml: cell .*pretrain\.mask_patch"):
        plan(load_spec(spec), tmp_path / "out")


def test_json_readers(tmp_path):
    from vitmim.config import read_json_mapping, read_jsonl

    assert read_jsonl(tmp_path / "missing.jsonl") == []
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1}\n\n{"step": 2}\n')
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]
    meta = tmp_path / "m.json"
    meta.write_text('{"kind": "classifier", "seed": true}')
    assert read_json_mapping(meta, "model description", {"kind": str})["kind"] == "classifier"
    with pytest.raises(UserError, match="m.json: run: key seed: expected an integer, got true"):
        read_json_mapping(meta, "run", {"seed": int})
    meta.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(UserError, match="m.json: run nests too deeply"):
        read_json_mapping(meta, "run")


@pytest.mark.parametrize("pool", ["classes", "all", "/data/unlabelled"])
def test_pre_training_reads_its_pool_and_fine_tuning_its_classes(pool):
    cfg = load_config(
        base={
            "data": {"classes": 10, "class_subset": 3, "label_fraction": 0.1},
            "pretrain": {"pool": pool},
        }
    )
    data = pretrain_data(cfg)
    if pool == "classes":
        assert data == cfg.data
    else:  # every class of the source, or the pool's own, all of its images
        assert (data.classes, data.class_subset, data.label_fraction) == (None, 0, 1.0)
        assert data.path == (cfg.data.path if pool == "all" else pool)
    assert (cfg.data.classes, cfg.data.class_subset) == (10, 3)  # fine-tuning's, untouched
