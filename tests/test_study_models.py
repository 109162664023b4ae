"""The study's classifiers (Guo et al.): mrnet2d, nodulex, densenet121. Output shapes on the cohorts' item
sizes, memory formats and autocast, that each one learns, MRNet's pooling over slices, NoduleX's slices
as channels, and DenseNet-121's start from a local ImageNet state dict."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from pydantic import ValidationError

from harmonia.api import Task
from harmonia.errors import InputError, PluginError
from harmonia.registry import Registry
from harmonia_plugins.models import densenet121, mrnet2d, nodulex
from harmonia_plugins.models.densenet121 import DenseNet121, DenseNet121Params
from harmonia_plugins.models.mrnet2d import MRNet2D, MRNet2DParams
from harmonia_plugins.models.nodulex import NoduleX, NoduleXParams

CLASSES = ("low", "high")
IMAGE = Task("classification", CLASSES, spatial_dims=2)
CROP = Task("classification", CLASSES, spatial_dims=3, item_shape=(5, 47, 47))
CUBE = Task("classification", CLASSES, spatial_dims=3, item_shape=(16, 16, 16))


@pytest.fixture(autouse=True)
def no_onednn():
    """Native convolutions: oneDNN compiles a kernel for each new convolution shape on first use, which costs
    DenseNet-121's ~120 shapes several seconds per test; the models' code is the same either way."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = previous


def mrnet(task: Task = IMAGE, seed: int = 0, **params) -> MRNet2D:
    torch.manual_seed(seed)
    return MRNet2D(MRNet2DParams(**params), task).eval()


def nodule(task: Task = CROP, seed: int = 0, **params) -> NoduleX:
    torch.manual_seed(seed)
    return NoduleX(NoduleXParams(**params), task).eval()


def dense(task: Task = IMAGE, seed: int = 0, **params) -> DenseNet121:
    torch.manual_seed(seed)
    return DenseNet121(DenseNet121Params(**params), task).eval()


#: (builder, task, input shape of one item) for each model at the sizes its cohorts produce
CASES = {
    "mrnet2d-128": (lambda: mrnet(width=0.25), IMAGE, (1, 128, 128)),
    "mrnet2d-47": (lambda: mrnet(width=0.25), IMAGE, (1, 47, 47)),
    "mrnet2d-5x47x47": (lambda: mrnet(CROP, width=0.25), CROP, (1, 5, 47, 47)),
    "nodulex-5x47x47": (lambda: nodule(CROP), CROP, (1, 5, 47, 47)),
    "nodulex-16^3": (lambda: nodule(CUBE), CUBE, (1, 16, 16, 16)),
    "nodulex-3d-5x47x47": (lambda: nodule(CROP, variant="3d", channels=[4, 8]), CROP, (1, 5, 47, 47)),
    "nodulex-3d-16^3": (lambda: nodule(CUBE, variant="3d", channels=[4, 8, 8]), CUBE, (1, 16, 16, 16)),
    "densenet121-64": (lambda: dense(), IMAGE, (1, 64, 64)),
}


@pytest.mark.parametrize("case", CASES)
def test_logits_and_features_have_the_documented_shapes(case):
    build, task, shape = CASES[case]
    model = build()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.logits.shape == (3, task.num_classes)
    assert out.features.shape == (3, model.feature_channels)
    assert out.levels == ()
    assert torch.isfinite(out.logits).all()


def test_feature_channels_follow_the_parameters():
    assert mrnet().feature_channels == 256  # AlexNet's last convolution
    assert mrnet(width=0.5).feature_channels == 128
    assert nodule(hidden=32).feature_channels == 32
    assert dense().feature_channels == 1024


@pytest.mark.parametrize(
    "build",
    [lambda seed: mrnet(CROP, seed), lambda seed: nodule(CROP, seed), lambda seed: dense(seed=seed)],
    ids=["mrnet2d", "nodulex", "densenet121"],
)
def test_the_seed_fixes_every_initial_weight(build):
    """The engine seeds before building a model so that every sweep point starts from the same weights."""
    a, b, other = build(5).state_dict(), build(5).state_dict(), build(6).state_dict()
    assert all(torch.isfinite(v).all() for v in a.values())
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not torch.equal(a[next(iter(a))], other[next(iter(other))])


@pytest.mark.parametrize("case", ["mrnet2d-128", "mrnet2d-47", "densenet121-64", "nodulex-5x47x47"])
def test_channels_last_input_gives_the_same_answer(case):
    build, _, shape = CASES[case]
    model = build()
    x = torch.randn(2, *shape)
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    with torch.no_grad():
        plain, permuted = model(x), model(x.contiguous(memory_format=fmt))
    torch.testing.assert_close(permuted.logits, plain.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(permuted.features, plain.features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["mrnet2d-47", "mrnet2d-5x47x47", "nodulex-5x47x47", "nodulex-3d-16^3"])
def test_runs_under_autocast(case):
    build, task, shape = CASES[case]
    model = build()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, *shape))
    assert out.logits.shape == (2, task.num_classes) and torch.isfinite(out.logits.float()).all()


@pytest.mark.parametrize("case", ["mrnet2d-47", "mrnet2d-5x47x47", "nodulex-5x47x47", "nodulex-3d-16^3"])
def test_a_few_gradient_steps_lower_the_loss_on_the_batch(case):
    build, _, shape = CASES[case]
    model = build().train()
    for module in model.modules():  # no dropout: the loss before and after must be comparable
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    torch.manual_seed(1)
    x, y = torch.randn(4, *shape), torch.tensor([0, 1, 1, 0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(3):
        loss = F.cross_entropy(model(x).logits, y)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert F.cross_entropy(model(x).logits, y).item() < first
    assert all(p.grad is not None for p in model.parameters())  # every parameter is on the path to the loss


def test_densenet121_learns_with_checkpointed_dense_layers():
    model = dense(seed=3, memory_efficient=True).train()
    assert model.net.features.denseblock1.denselayer1.memory_efficient
    torch.manual_seed(1)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 1, 0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = F.cross_entropy(model(x).logits, y)
    before.backward()
    optimizer.step()
    assert F.cross_entropy(model(x).logits, y).item() < before.item()


@pytest.mark.parametrize(
    "make, task",
    [
        (MRNet2D, Task("segmentation", ("background", "tumour"))),
        (NoduleX, Task("segmentation", ("background", "nodule"), spatial_dims=3, item_shape=(5, 47, 47))),
        (DenseNet121, Task("segmentation", ("background", "heart"))),
    ],
)
def test_a_segmentation_task_is_refused(make, task):
    with pytest.raises(
        InputError, match=rf"^{make.name} does classification only; this cohort's task is segmentation$"
    ):
        make(make.Params(), task)


def test_models_refuse_images_of_the_wrong_dimension():
    """What __init__ refuses is what ``image_dims`` declares (the recipe is checked against it before a run)."""
    assert (MRNet2D.image_dims, NoduleX.image_dims, DenseNet121.image_dims) == ((2, 3), (3,), (2,))
    with pytest.raises(InputError, match=r"^nodulex needs 3-D crops; .*use mrnet2d for 2-D images"):
        NoduleX(NoduleXParams(), IMAGE)
    with pytest.raises(InputError, match=r"^densenet121 needs 2-D images; .*use nodulex"):
        DenseNet121(DenseNet121Params(), CROP)


@pytest.mark.parametrize(
    "model, shape, expected",
    [
        (lambda: mrnet(width=0.25), (2, 1, 5, 64, 64), r"expects \[N, C, H, W\], got shape \(2, 1, 5, 64, 64\)$"),
        (lambda: mrnet(CROP, width=0.25), (2, 1, 64, 64), r"expects \[N, C, D, H, W\], got shape \(2, 1, 64, 64\)$"),
        (lambda: nodule(), (2, 1, 47, 47), r"expects crops \[N, C, D, H, W\], got shape \(2, 1, 47, 47\)$"),
        (lambda: dense(), (2, 1, 1, 64, 64), r"expects images \[N, C, H, W\], got shape \(2, 1, 1, 64, 64\)$"),
        (lambda: dense(), (2, 1, 16, 64), r"needs images of at least 29x29 pixels, got 16x64$"),
        (lambda: mrnet(width=0.25), (2, 3, 64, 64), r"expects 1 input channel\(s\), got shape \(2, 3, 64, 64\)$"),
    ],
)
def test_a_wrong_input_shape_is_a_one_line_value_error(model, shape, expected):
    with pytest.raises(ValueError, match=expected) as info:
        model()(torch.randn(*shape))
    assert "\n" not in str(info.value)


# -- mrnet2d -----------------------------------------------------------------------------------------


def per_slice_features(model2d: MRNet2D, x: torch.Tensor) -> torch.Tensor:
    """``[N, 1, D, H, W]`` -> ``[N, D, F]``: the 2-D model run on each slice on its own."""
    return torch.stack([model2d(x[:, :, d]).features for d in range(x.shape[2])], 1)


@pytest.mark.parametrize("pooling, reduce", [("max", lambda f: f.amax(1)), ("mean", lambda f: f.mean(1))])
def test_mrnet2d_pools_the_2d_features_of_each_slice(pooling, reduce):
    """A 3-D item's features are the max (mean) over its slices of what the 2-D path gives each slice alone."""
    model3d = mrnet(CROP, width=0.25, slice_pooling=pooling)
    model2d = mrnet(IMAGE, seed=7, width=0.25)
    model2d.load_state_dict(model3d.state_dict())  # one set of weights for both paths
    torch.manual_seed(2)
    x = torch.randn(3, 1, 5, 47, 47)
    with torch.no_grad():
        out, slices = model3d(x), per_slice_features(model2d, x)
    winners = slices.argmax(1)  # the slice that gives each item's each feature its maximum
    assert len(winners.unique()) > 1, "one slice wins every feature: the test could not tell max from slice 0"
    torch.testing.assert_close(out.features, reduce(slices), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, model3d.head(reduce(slices)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.features, slices.mean(1) if pooling == "max" else slices.amax(1), atol=1e-4)


def test_mrnet2d_changing_one_slice_acts_only_through_that_slice():
    model3d = mrnet(CROP, width=0.25)
    model2d = mrnet(IMAGE, width=0.25)
    model2d.load_state_dict(model3d.state_dict())
    torch.manual_seed(3)
    x = torch.randn(2, 1, 5, 47, 47)
    changed = x.clone()
    changed[0, :, 3] = 3 * torch.randn(47, 47)  # item 0, slice 3 only
    with torch.no_grad():
        before, after = model3d(x), model3d(changed)
        slices = per_slice_features(model2d, x)
        slices[0, 3] = model2d(changed[:1, :, 3]).features[0]  # only that slice's vector is new
    torch.testing.assert_close(after.features, slices.amax(1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after.features[0], before.features[0])
    torch.testing.assert_close(after.logits[1], before.logits[1])  # the other item is untouched


def test_mrnet2d_resizes_only_small_slices_keeping_their_aspect():
    model = mrnet(width=0.25)
    seen = []
    handle = model.encoder.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        for size in [(47, 47), (32, 96), (128, 128), (64, 200)]:
            model(torch.randn(1, 1, *size))
    handle.remove()
    assert seen == [(64, 64), (64, 192), (128, 128), (64, 200)]
    with pytest.raises(ValidationError, match="greater than or equal to 63"):
        MRNet2DParams(min_side=62)


def test_mrnet2d_first_convolution_keeps_alexnets_geometry_for_one_channel():
    first = mrnet().encoder[0]
    alex = torchvision.models.alexnet(weights=None).features[0]
    assert (first.in_channels, first.out_channels) == (1, alex.out_channels)
    assert (first.kernel_size, first.stride, first.padding) == (alex.kernel_size, alex.stride, alex.padding)


# -- nodulex -----------------------------------------------------------------------------------------


def test_nodulex_takes_the_crops_slices_as_the_first_layers_channels():
    assert nodule(CROP).encoder[0].weight.shape == (32, 5, 3, 3)
    assert nodule(CUBE, channels=[8]).encoder[0].weight.shape == (8, 16, 3, 3)
    no_shape = Task("classification", CLASSES, spatial_dims=3)
    assert nodule(no_shape, slices=7).encoder[0].in_channels == 7
    assert nodule(CROP, variant="3d").encoder[0].weight.shape == (32, 1, 3, 3, 3)


def test_nodulex_a_crop_of_another_depth_says_which_parameter_to_set():
    model = nodule(CROP)
    with pytest.raises(
        ValueError, match=r"built for crops of 5 slices .* got 7 .*set the model parameter slices to 7$"
    ):
        model(torch.randn(2, 1, 7, 47, 47))
    with pytest.raises(InputError, match=r"no item shape; set the model parameter slices$"):
        NoduleX(NoduleXParams(), Task("classification", CLASSES, spatial_dims=3))
    with pytest.raises(InputError, match=r"slices is 7 but this cohort's crops have 5 slices"):
        NoduleX(NoduleXParams(slices=7), CROP)


def test_nodulex_slices_are_channels_not_a_pooled_axis():
    """Swapping two slices changes a 2.5d model's answer (slices are ordered channels), not the batch's other items."""
    model = nodule(CROP, block_dropout=0.0, dropout=0.0)
    torch.manual_seed(4)
    x = torch.randn(2, 1, 5, 47, 47)
    swapped = x.clone()
    swapped[0, :, [0, 4]] = x[0, :, [4, 0]]
    with torch.no_grad():
        a, b = model(x), model(swapped)
    assert not torch.allclose(a.logits[0], b.logits[0])
    torch.testing.assert_close(a.logits[1], b.logits[1])


def test_nodulex_works_on_a_72_cube():
    model = nodule(Task("classification", CLASSES, spatial_dims=3, item_shape=(72, 72, 72)), channels=[8, 8])
    with torch.no_grad():
        assert model(torch.randn(1, 1, 72, 72, 72)).logits.shape == (1, 2)


# -- densenet121 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    """A stand-in for torchvision's ImageNet file: a randomly initialised 3-channel, 1000-class DenseNet-121."""
    torch.manual_seed(11)
    state = torchvision.models.densenet121(weights=None).state_dict()
    for key, value in state.items():  # BatchNorm statistics that differ from a fresh model's 0 and 1
        if key.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + 0.5)
    path = tmp_path_factory.mktemp("weights") / "densenet121-imagenet.pth"
    torch.save(state, path)
    return path, state


def assert_started_from(model: DenseNet121, state: dict[str, torch.Tensor]) -> None:
    """The model's first convolution is the file's summed over RGB, every other tensor but the head is the file's."""
    own = model.net.state_dict()
    assert own["features.conv0.weight"].shape == (64, 1, 7, 7)
    torch.testing.assert_close(own["features.conv0.weight"], state["features.conv0.weight"].sum(1, keepdim=True))
    body = [k for k in own if not k.startswith(("classifier.", "features.conv0."))]
    assert len(body) > 700 and all(k in state for k in body)
    assert [k for k in body if not torch.equal(own[k], state[k])] == []


def test_densenet121_starts_from_the_files_weights_with_summed_rgb_kernels(imagenet_file):
    path, state = imagenet_file
    model = dense(weights=path)
    assert_started_from(model, state)
    assert model.net.classifier.weight.shape == (2, 1024) and not model.head_from_weights
    fresh = dense(seed=0)  # the same seed without a file: the head is the freshly initialised one
    assert torch.equal(model.net.classifier.weight, fresh.net.classifier.weight)
    assert not torch.equal(model.net.features.norm5.running_var, fresh.net.features.norm5.running_var)
    assert model.weights_source == "imagenet:densenet121-imagenet.pth"


def test_densenet121_takes_the_files_head_only_where_it_fits(imagenet_file):
    path, state = imagenet_file
    model = dense(Task("classification", tuple(f"class{i}" for i in range(1000))), weights=path)
    assert model.head_from_weights and torch.equal(model.net.classifier.weight, state["classifier.weight"])


def test_densenet121_on_one_channel_matches_imagenet_on_a_grey_rgb_image(imagenet_file):
    """Summing the RGB kernels is what makes a grey image copied into R, G and B give the same features."""
    path, state = imagenet_file
    model = dense(weights=path)
    rgb = torchvision.models.densenet121(weights=None).eval()
    rgb.load_state_dict(state)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = torch.flatten(F.adaptive_avg_pool2d(F.relu(rgb.features(x.expand(-1, 3, -1, -1))), 1), 1)
        torch.testing.assert_close(model(x).features, expected, rtol=1e-4, atol=1e-4)


def test_densenet121_reads_the_old_key_names_of_torchvisions_hub_files(imagenet_file, tmp_path):
    _, state = imagenet_file
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
    old = {k: v for k, v in old.items() if not k.endswith("num_batches_tracked")}  # saved before BatchNorm counted
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "old.pth")
    assert_started_from(dense(weights=tmp_path / "old.pth"), state)


def test_densenet121_without_weights_is_random_and_says_so():
    model = dense(weights=None)
    assert model.weights_source == "random" and not model.head_from_weights
    assert dense(seed=1).weights_source == "random"
    assert not torch.equal(dense(seed=1).net.features.conv0.weight, dense(seed=2).net.features.conv0.weight)


def test_densenet121_a_missing_or_damaged_file_is_an_input_error_naming_it(imagenet_file, tmp_path):
    path, _ = imagenet_file
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(InputError, match=rf"^{re.escape(str(missing))}: no such file"):
        dense(weights=missing)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(InputError, match=rf"^{re.escape(str(truncated))}: cannot be read as a weights-only state dict"):
        dense(weights=truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint\n" * 10)
    with pytest.raises(InputError, match=rf"^{re.escape(str(garbage))}: cannot be read") as info:
        dense(weights=garbage)
    assert "\n" not in str(info.value)


def test_densenet121_a_file_of_other_weights_is_an_input_error(imagenet_file, tmp_path):
    path, state = imagenet_file
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    with pytest.raises(InputError, match=rf"^{re.escape(str(resnet))}: does not hold torchvision densenet121 weights"):
        dense(weights=resnet)
    renamed = tmp_path / "renamed.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, renamed)  # a DataParallel prefix
    with pytest.raises(InputError, match=r"missing \(e\.g\. classifier\.bias\), \d+ unexpected"):
        dense(weights=renamed)
    misshapen = tmp_path / "misshapen.pth"
    torch.save({**state, "features.norm5.weight": torch.ones(7)}, misshapen)
    with pytest.raises(InputError, match=r"do not fit densenet121, e\.g\. features\.norm5\.weight \(7,\)"):
        dense(weights=misshapen)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.ones(1)], not_a_dict)
    with pytest.raises(InputError, match="not a state dict"):
        dense(weights=not_a_dict)


# -- through the registry -----------------------------------------------------------------------------


def test_the_models_register_and_are_created_from_recipe_parameters():
    registry = Registry()
    for module in (mrnet2d, nodulex, densenet121):
        registry.register(module)
    assert registry.create("model", "mrnet2d", {"slice_pooling": "mean", "width": 0.25}, CROP).params.width == 0.25
    assert registry.create("model", "nodulex", {"variant": "3d"}, CROP).slices is None
    assert registry.create("model", "densenet121", {"weights": None}, IMAGE).weights_source == "random"
    with pytest.raises(PluginError, match=r"slice_pooling"):
        registry.create("model", "mrnet2d", {"slice_pooling": "median"}, CROP)
    with pytest.raises(PluginError, match=r"unknown key; did you mean 'slices'"):
        registry.create("model", "nodulex", {"slice": 5}, CROP)
