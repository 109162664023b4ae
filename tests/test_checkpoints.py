"""Trained models kept on disk: save then load predicts the same, the sidecar says what it is, bad files fail."""

from __future__ import annotations

import json

import pytest
import torch
from test_engine import toy_set
from toy_plugins import PixelAccuracy, ToyNet, ToyNetParams

from harmonia.api import NoParams, Task
from harmonia.checkpoints import CheckpointInfo, checkpoint_path, load_model, plugin_record, save_model
from harmonia.engine import Trainer
from harmonia.errors import InputError
from harmonia.registry import Registry
from harmonia.settings import TrainSpec
from harmonia_plugins.models.unet2d import UNet2D, UNet2DParams

TASK = Task("segmentation", ("background", "square"))
INFO = CheckpointInfo(3, 1, "Siemens", "best_val", "pixel_accuracy", 2, ({"plugin": "spy_mitigation", "params": {}},))


def trained_toynet() -> ToyNet:
    torch.manual_seed(0)
    model = ToyNet(ToyNetParams(width=3), TASK)
    settings = TrainSpec(epochs=2, batch_size=8, lr=0.01, device="cpu")  # channels_last: weights saved in that layout
    trainer = Trainer(model, [], PixelAccuracy(NoParams(), TASK), settings, torch.device("cpu"))
    trainer.fit(toy_set(), toy_set(seed=1), None)
    return model


def test_save_then_load_predicts_identically_and_the_sidecar_says_what_it_is(registry, tmp_path):
    model = trained_toynet()
    path = save_model(tmp_path / "models", model, INFO)
    assert path == tmp_path / "models" / "sweep3-seed1-Siemens.pt"

    loaded = load_model(path, registry)
    assert type(loaded) is ToyNet and loaded.params == model.params and loaded.task == TASK and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    x = torch.randn(4, 1, 16, 16)
    model.eval().to(memory_format=torch.contiguous_format)  # same layout as the loaded one: same float rounding
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert load_model(path.with_suffix(".json"), registry).state_dict().keys() == model.state_dict().keys()

    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["model"] == {"plugin": "toynet", "params": {"width": 3}}
    assert sidecar["task"] == {
        "kind": "segmentation",
        "class_names": ["background", "square"],
        "spatial_dims": 2,
        "in_channels": 1,
        "item_shape": [],
    }
    assert sidecar["cell"] == {"sweep_id": 3, "seed": 1, "train_domain": "Siemens"}
    assert sidecar["selection"] == {"rule": "best_val", "metric": "pixel_accuracy", "epoch": 2}
    assert sidecar["mitigations"] == [{"plugin": "spy_mitigation", "params": {}}]
    assert sidecar["format"] == 1 and sidecar["harmonia_version"]


def test_a_unet_comes_back_through_the_installed_plugin(tmp_path):
    torch.manual_seed(0)
    unet = UNet2D(UNet2DParams(channels=[4, 8], strides=[2]), TASK).eval()
    loaded = load_model(save_model(tmp_path, unet, INFO), Registry.from_entry_points())
    assert loaded.params == unet.params and loaded.strides == (2,)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, unet(x).logits) and torch.equal(loaded(x).features, unet(x).features)


def test_domain_names_are_made_safe_for_file_names_without_two_sharing_one(tmp_path):
    odd = checkpoint_path(tmp_path, 0, 0, "GE/Philips: mixed")
    assert odd.parent == tmp_path and odd.name.startswith("sweep0-seed0-GE_Philips__mixed-") and odd.suffix == ".pt"
    assert checkpoint_path(tmp_path, 0, 0, "GE_Philips__mixed").name == "sweep0-seed0-GE_Philips__mixed.pt"
    assert checkpoint_path(tmp_path, 0, 0, "../x") != checkpoint_path(tmp_path, 0, 0, "_.x")
    info = CheckpointInfo(0, 0, "GE/Philips: mixed", "last", None, 1)
    saved = save_model(tmp_path, ToyNet(ToyNetParams(width=2), TASK), info)
    assert saved == odd
    assert json.loads(saved.with_suffix(".json").read_text())["cell"]["train_domain"] == "GE/Philips: mixed"


def test_plugin_record_has_every_parameter_with_its_default():
    assert plugin_record(UNet2D(UNet2DParams(channels=[4, 8]), TASK)) == {
        "plugin": "unet2d",
        "params": {"channels": [4, 8], "strides": None, "num_res_units": 2, "norm": "instance", "dropout": 0.0},
    }


def damage_missing_sidecar(pt):
    pt.with_suffix(".json").unlink()
    return "no such file"


def damage_unknown_plugin(pt):
    sidecar = json.loads(pt.with_suffix(".json").read_text())
    sidecar["model"]["plugin"] = "toynett"
    pt.with_suffix(".json").write_text(json.dumps(sidecar))
    return "unknown model plugin 'toynett'; did you mean 'toynet'"


def damage_rejected_params(pt):
    sidecar = json.loads(pt.with_suffix(".json").read_text())
    sidecar["model"]["params"] = {"width": 0}
    pt.with_suffix(".json").write_text(json.dumps(sidecar))
    return "params.width"


def damage_sidecar_not_json(pt):
    pt.with_suffix(".json").write_text("{not json")
    return "not a readable checkpoint sidecar"


def damage_corrupt_weights(pt):
    pt.write_bytes(b"PK\x03\x04 this is not a zip file at all")
    return "not a readable checkpoint"


def damage_missing_weights(pt):
    pt.unlink()
    return "no such file"


def damage_weights_of_another_model(pt):
    torch.save(ToyNet(ToyNetParams(width=5), TASK).state_dict(), pt)
    return "weights do not fit model 'toynet'"


def damage_not_a_state_dict(pt):
    torch.save([torch.zeros(2)], pt)
    return "not a checkpoint"


def damage_code_in_the_pickle(pt):
    torch.save({"net": ToyNet(ToyNetParams(width=3), TASK)}, pt)  # a whole module: only loadable by running code
    return "cannot be loaded as weights only"


@pytest.mark.parametrize(
    "damage",
    [
        damage_missing_sidecar,
        damage_unknown_plugin,
        damage_rejected_params,
        damage_sidecar_not_json,
        damage_corrupt_weights,
        damage_missing_weights,
        damage_weights_of_another_model,
        damage_not_a_state_dict,
        damage_code_in_the_pickle,
    ],
)
def test_a_bad_checkpoint_is_a_one_line_input_error_naming_the_file(damage, registry, tmp_path):
    pt = save_model(tmp_path, ToyNet(ToyNetParams(width=3), TASK), INFO)
    expected = damage(pt)
    with pytest.raises(InputError) as error:
        load_model(pt, registry)
    message = str(error.value)
    assert message.startswith(str(tmp_path / "sweep3-seed1-Siemens.")) and expected in message
    assert "\n" not in message


def test_a_cell_keeps_its_selected_model_when_asked(registry, toy_recipe, tmp_path):
    from harmonia.protocol import Cell, load_cohort, run_cell, split_seed
    from harmonia.recipe import load_recipe
    from harmonia.splits import split_patients

    toy_recipe["train"].update(seeds=1, epochs=3, save_models=True)
    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    cpu = torch.device("cpu")
    outcome = run_cell(Cell(point, 0, "A"), data, splits, registry, cpu, models_dir=tmp_path / "models")

    path = checkpoint_path(tmp_path / "models", 0, 0, "A")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["selection"] == {
        "rule": "best_val",
        "metric": "pixel_accuracy",
        "epoch": outcome.training.selected_epoch,
    }
    model = load_model(path, registry).to(memory_format=torch.channels_last)  # as the engine held it
    trainer = Trainer(model, [], PixelAccuracy(NoParams(), TASK), point.recipe.train, torch.device("cpu"))
    for row in outcome.rows:  # the kept weights score on each test split exactly what the cell reported
        test = data.items.of_patients(splits[row["test_domain"]].test, row["test_domain"])
        assert PixelAccuracy(NoParams(), TASK).evaluate(trainer.predictions(test))[0].value == row["value"]

    point.recipe.train.save_models = False  # the default: nothing is written
    run_cell(Cell(point, 0, "A"), data, splits, registry, torch.device("cpu"), models_dir=tmp_path / "off")
    assert not (tmp_path / "off").exists()
