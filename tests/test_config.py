"""The config mechanism: defaults < YAML < --set, strict keys, stable hashes, and every YAML in
configs/ resolving."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bevkd.pipeline.config import (
    Config,
    ConfigError,
    config_sha256,
    load_config,
    save_resolved,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_resolve_without_a_file() -> None:
    assert load_config() == Config()


def test_unknown_key_names_the_nearest_spelling(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "data:\n  image_sise: [128, 224]\n")
    with pytest.raises(ConfigError, match=r"data\.image_sise.*did you mean 'image_size'"):
        load_config(path)


def test_unknown_top_level_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*'train'"):
        load_config(_yaml(tmp_path, "trian:\n  epochs: 3\n"))


def test_unknown_key_in_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"train\.epoch\b.*did you mean 'epochs'"):
        load_config(overrides=["train.epoch=3"])


def test_file_then_overrides_last_wins(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "train:\n  epochs: 3\n  lr: 0.1\ndata:\n  lidar_sweeps: 4\n")
    cfg = load_config(path, ["train.epochs=7", "data.image_size=[64, 96]"])
    assert cfg.train.epochs == 7  # the override beats the file
    assert cfg.train.lr == 0.1  # the file beats the default
    assert cfg.data.lidar_sweeps == 4
    assert cfg.data.image_size == (64, 96)
    assert cfg.train.batch_size == Config().train.batch_size  # untouched default


def test_type_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(overrides=["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"data\.image_size: expected 2 values, got 3"):
        load_config(overrides=["data.image_size=[1, 2, 3]"])


def test_sha256_is_stable_and_tracks_changes() -> None:
    a = config_sha256(load_config(overrides=["train.epochs=5"]))
    b = config_sha256(load_config(overrides=["train.epochs=5"]))
    c = config_sha256(load_config(overrides=["train.epochs=6"]))
    assert a == b and len(a) == 64
    assert a != c


def test_save_resolved_round_trips(tmp_path: Path) -> None:
    cfg = load_config(overrides=["train.epochs=5", "data.cameras=[CAM_FRONT]", "name=x"])
    path = save_resolved(cfg, tmp_path / "out")
    assert load_config(path) == cfg
    assert (tmp_path / "out" / "config.sha256").read_text().strip() == config_sha256(cfg)
    # Saved values are the full resolution, not only the deltas.
    assert yaml.safe_load(path.read_text())["train"]["batch_size"] == cfg.train.batch_size


# Every config that ships, by path under configs/: one that goes missing (or an empty or
# absent folder) fails test_every_config_file_loads instead of passing on nothing.
SHIPPED_CONFIGS = (
    *(f"demo/{n}.yaml" for n in ("cache", "fusion_teacher", "label_encoder", "lidar_teacher")),
    *(f"demo/student_{n}.yaml" for n in ("baseline", "cmkd", "cmkd_pseudo_label",
                                         "cmkd_unlabeled", "focal", "labeldistill",
                                         "pseudo_label", "simdistill")),
    *(f"kitti/{n}.yaml" for n in ("demo_cache", "demo_label_encoder", "demo_lidar_teacher",
                                  "lidar_teacher")),
    *(f"kitti/student_{n}.yaml" for n in ("baseline", "cmkd", "cmkd_gt_kd", "cmkd_phase1",
                                          "cmkd_phase2")),
    *(f"nuscenes/{n}.yaml" for n in ("cache", "fusion_teacher", "label_encoder", "lidar_teacher")),
    *(f"nuscenes/student_{n}.yaml" for n in ("cmkd", "focal", "labeldistill", "pseudo_label",
                                             "simdistill")),
)  # fmt: skip


def test_every_config_file_loads(tmp_path: Path) -> None:
    found = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")}
    missing = sorted(set(SHIPPED_CONFIGS) - found)
    assert not missing, f"{CONFIG_DIR} lacks the configs {missing}"
    assert len(SHIPPED_CONFIGS) == 30 and len(found) >= len(SHIPPED_CONFIGS)
    failures = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            failures.append(str(exc))
            continue
        # The resolved config survives save_resolved -> load_config unchanged.
        out = tmp_path / path.relative_to(CONFIG_DIR).with_suffix("")
        assert load_config(save_resolved(cfg, out)) == cfg, path
    assert not failures, "\n".join(failures)


# Each student config and the stage-one config whose store it reads.
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.kind=lidarr", r"model\.kind: 'lidarr' is not one of .*did you mean 'lidar'"),
        ("model.lidar_encoder=dense", r"model\.lidar_encoder: 'dense'"),
        (
            "data.format=kiti",
            r"data\.format: 'kiti' is not one of \['nuscenes', 'kitti', 'waymo'\]",
        ),
        ("data.bev_flip=z", r"data\.bev_flip: 'z'"),
        ("head.code_weights=[1, 2]", r"head\.code_weights has 2 values; it needs one per"),
        ("cache.teachers=[lidr]", r"cache\.teachers: 'lidr' .*did you mean 'lidar'"),
        (
            "cache.teachers=[lidar, lidar]",
            r"cache\.teachers: \['lidar', 'lidar'\] names an entry twice",
        ),
        ("cache.heatmap_as=logit", r"cache\.heatmap_as: 'logit' .*did you mean 'logits'"),
        ("cache.splits=[train, test]", r"cache\.splits: 'test'"),
        ("cache.lidar_bev_scales=[1, 4]", r"cache\.lidar_bev_scales: 4"),
        ("cache.max_frames=-1", r"cache\.max_frames: -1; use 0 for every frame"),
        ("distill.mode=gt", r"distill\.mode: 'gt'"),
        ("distill.bev_mask=fg", r"distill\.bev_mask: 'fg'"),
    ],
)
def test_choice_fields_are_checked_when_the_config_loads(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_key_given_twice_in_a_yaml_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n")
    with pytest.raises(
        ConfigError, match=r"twice.yaml: line 4: key 'epochs' is given twice .*line 2"
    ):
        load_config(path)
    path.write_text("train:\n  epochs: 2\nmodel:\n  epochs: 3\n")  # same key, other mappings: fine
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.epochs'"):
        load_config(path)


def _sha_without(data: dict, keys: tuple[str, ...]) -> str:
    """sha256 of a resolved config with ``keys`` (dotted) taken out, computed here on its own:
    what code from before those keys existed recorded."""
    import hashlib
    import json

    for key in keys:
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        del node[last]
    return hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def test_a_record_made_before_a_key_was_added_still_matches() -> None:
    from bevkd.pipeline.config import ADDED_KEYS, config_sha256, config_sha256_variants, to_dict

    cfg = load_config(None, ["train.epochs=3"])
    old = _sha_without(to_dict(cfg), ADDED_KEYS)  # the config as code before ADDED_KEYS hashed it
    variants = config_sha256_variants(cfg)
    assert config_sha256(cfg) in variants and old in variants
    # a config that sets an added key away from its default is not what an older record meant
    moved = load_config(None, ["train.epochs=3", "centerpoint.max_voxels=5"])
    assert old not in config_sha256_variants(moved)
    # ... but a record made after centerpoint existed, before any of the keys added since, is
    since = range(ADDED_KEYS.index("centerpoint") + 1, len(ADDED_KEYS))
    between = {_sha_without(to_dict(moved), ADDED_KEYS[i:]) for i in since}
    assert len(between) == len(since)
    assert config_sha256_variants(moved) == {config_sha256(moved), *between}
