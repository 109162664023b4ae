"""The acquisition simulator: determinism, each component on its own, and the vendor effects twins rely on."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage, optimize, stats
from skimage.exposure import match_histograms
from toy_plugins import ToyCohort

from harmonia import datasource
from harmonia.api import TwinSettings
from harmonia.datasource import twin_folder
from harmonia.synth import (
    COMPONENTS,
    MODALITY_DEFAULTS,
    Noise,
    Psf,
    ScannerSignature,
    acquire,
    signature_for,
    smooth_field,
    textured_noise,
    twin_signature,
)

#: clean values of background, body, organ and lesion in each modality's native units
INTENSITIES = {"MRI": [0.0, 300.0, 450.0, 600.0], "CT": [-1000.0, -80.0, 40.0, 70.0], "X-ray": [0.0, 0.3, 0.5, 0.7]}
VENDORS = ["Siemens", "GE", "Philips", "Toshiba", "Canon"]


def phantom(seed: int, n: int = 64) -> np.ndarray:
    """Random anatomy: an elliptical body (1) holding a blobby organ (2) and a round lesion (3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n] / n
    (cy, cx), (ry, rx) = rng.uniform(0.4, 0.6, 2), rng.uniform(0.3, 0.45, 2)
    body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    tissues = body.astype(np.int64)
    tissues[body & (smooth_field((n, n), 0.25, rng) > 0.2)] = 2
    (ly, lx), r = rng.uniform(0.3, 0.7, 2), rng.uniform(0.04, 0.1)
    tissues[body & ((yy - ly) ** 2 + (xx - lx) ** 2 < r * r)] = 3
    return tissues


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def high_frequency_energy(x: np.ndarray) -> float:
    """Fraction of the (mean-removed, Hann-windowed) power above half the Nyquist frequency."""
    window = np.prod(np.meshgrid(*[np.hanning(n) for n in x.shape], indexing="ij"), axis=0)
    power = np.abs(np.fft.fftn((x - x.mean()) * window)) ** 2
    radius = np.sqrt(sum(f**2 for f in np.meshgrid(*[np.fft.fftfreq(n) for n in x.shape], indexing="ij")))
    return float(power[radius > 0.25].sum() / power.sum())


# ------------------------------------------------------------------------------------------------
# signatures: determinism, strength, component scales, errors
# ------------------------------------------------------------------------------------------------


def test_signature_is_deterministic_and_vendor_specific():
    assert signature_for("GE", "MRI", seed=3) == signature_for("GE", "MRI", seed=3)
    assert signature_for("GE", "mri", seed=3) == signature_for("GE", "MRI", seed=3)
    assert signature_for("GE", "MRI", seed=3) != signature_for("GE", "MRI", seed=4)
    assert signature_for("GE", "MRI") != signature_for("Siemens", "MRI")
    assert signature_for("GE", "MRI") != signature_for("GE", "CT")


def test_image_is_deterministic_in_its_seed():
    tissues, signature = phantom(0), signature_for("Philips", "MRI")
    first = acquire(tissues, INTENSITIES["MRI"], signature, seed=5)
    assert first.dtype == np.float32 and first.shape == tissues.shape
    assert np.array_equal(first, acquire(tissues, INTENSITIES["MRI"], signature, seed=5))
    assert not np.array_equal(first, acquire(tissues, INTENSITIES["MRI"], signature, seed=6))
    other_vendor = acquire(tissues, INTENSITIES["MRI"], signature_for("GE", "MRI"), seed=5)
    assert np.abs(zscore(first) - zscore(other_vendor)).mean() > 0.1


@pytest.mark.parametrize("modality", ["MRI", "CT", "X-ray"])
def test_strength_zero_is_the_same_neutral_signature_for_every_vendor(modality):
    signatures = [signature_for(v, modality, strength=0.0) for v in VENDORS]
    assert all(s == signatures[0] for s in signatures)
    assert signatures[0] == MODALITY_DEFAULTS[modality].neutral
    neutral = signatures[0]
    assert neutral.bias.amplitude == 0 and (neutral.transfer.gamma, neutral.transfer.gain) == (1, 1)
    assert neutral.contrast.log_slope_sd == 0 and neutral.psf.kspace == 1 and neutral.noise.variation == 0
    tissues = phantom(1)
    images = [acquire(tissues, INTENSITIES[modality], s, seed=2) for s in signatures]
    assert all(np.array_equal(images[0], im) for im in images)


def test_strength_and_component_scales_stretch_the_vendor_deviation():
    base = MODALITY_DEFAULTS["MRI"].neutral
    one, two = signature_for("GE", "MRI"), signature_for("GE", "MRI", strength=2.0)
    noisy = signature_for("GE", "MRI", components={"noise": 2.0})
    log_dev = np.log(one.noise.level / base.noise.level)
    assert abs(log_dev) > 0.1
    assert np.log(two.noise.level / base.noise.level) == pytest.approx(2 * log_dev)
    assert np.log(noisy.noise.level / base.noise.level) == pytest.approx(2 * log_dev)
    assert noisy.psf == one.psf and noisy.transfer == one.transfer  # other components untouched
    assert two.bias.amplitude == pytest.approx(2 * one.bias.amplitude)
    no_psf = [signature_for(v, "MRI", components={"psf": 0.0}) for v in VENDORS]
    assert {s.psf.sigma for s in no_psf} == {base.psf.sigma}
    assert len({s.noise.level for s in no_psf}) == len(VENDORS)


def test_modality_defaults_order_mri_xray_ct():
    spread = {m: MODALITY_DEFAULTS[m].spread for m in ("MRI", "X-ray", "CT")}
    for field in ("contrast_log_slope", "bias_amplitude"):
        assert getattr(spread["MRI"], field) > getattr(spread["X-ray"], field) > getattr(spread["CT"], field)
    # X-ray vendors' processing tone curves differ about as much as MRI intensity curves; CT is calibrated in HU
    assert min(spread["MRI"].transfer_log_gamma, spread["X-ray"].transfer_log_gamma) > spread["CT"].transfer_log_gamma
    assert spread["CT"].bias_amplitude == spread["CT"].transfer_log_gamma == 0
    assert spread["MRI"].psf_kspace_cut > 0 and spread["MRI"].noise_variation > 0  # k-space matrix, parallel imaging
    assert MODALITY_DEFAULTS["MRI"].neutral.noise.rician and not MODALITY_DEFAULTS["CT"].neutral.noise.rician


def test_bad_arguments_are_value_errors_that_say_what_is_valid():
    with pytest.raises(ValueError, match="MRI, X-ray, CT"):
        signature_for("GE", "PET")
    with pytest.raises(ValueError, match="contrast, psf, bias, transfer, noise"):
        signature_for("GE", "MRI", components={"blur": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        signature_for("GE", "MRI", strength=-1)
    with pytest.raises(ValueError, match="valid"):
        ScannerSignature().only("blur")
    tissues = phantom(0)
    with pytest.raises(ValueError, match="one per label 0..3"):
        acquire(tissues, [0.0, 1.0, 2.0], ScannerSignature(), seed=0)
    with pytest.raises(ValueError, match="integer label map"):
        acquire(tissues.astype(float), INTENSITIES["MRI"], ScannerSignature(), seed=0)
    with pytest.raises(ValueError, match="spacing"):
        acquire(tissues, INTENSITIES["MRI"], ScannerSignature(), seed=0, spacing=(1.0, 1.0, 1.0))


def test_signature_is_frozen_and_round_trips_through_json():
    signature = signature_for("Canon", "X-ray", seed=7)
    with pytest.raises(ValidationError):
        signature.psf = Psf(sigma=3.0)
    assert ScannerSignature.model_validate_json(signature.model_dump_json()) == signature


# ------------------------------------------------------------------------------------------------
# each component on its own
# ------------------------------------------------------------------------------------------------


def test_disabled_signature_returns_the_clean_phantom():
    tissues = phantom(2)
    image = acquire(tissues, INTENSITIES["CT"], signature_for("GE", "CT").only(), seed=0)
    assert np.array_equal(image, np.asarray(INTENSITIES["CT"], np.float32)[tissues])


def test_psf_alone_removes_high_frequencies_more_as_sigma_grows():
    tissues, values = phantom(3), INTENSITIES["MRI"]
    clean = acquire(tissues, values, ScannerSignature().only(), seed=0)
    energies = [
        high_frequency_energy(acquire(tissues, values, ScannerSignature(psf=Psf(sigma=s)).only("psf"), seed=0))
        for s in (0.5, 1.0, 2.0)
    ]
    assert high_frequency_energy(clean) > energies[0] > energies[1] > energies[2]
    assert energies[2] < 0.1 * high_frequency_energy(clean)


def test_psf_follows_the_voxel_spacing():
    tissues = np.zeros((32, 32, 32), np.int64)
    tissues[:, :, 16:] = 1
    tissues[:, 16:, :] += 1
    signature = ScannerSignature(psf=Psf(sigma=2.0)).only("psf")
    image = acquire(tissues, [0.0, 1.0, 2.0], signature, seed=0, spacing=(1.0, 1.0, 4.0))
    edge_width = [np.count_nonzero(np.abs(np.diff(image[0], axis=a)) > 1e-3) for a in (0, 1)]
    assert edge_width[1] < edge_width[0]  # the 4x coarser axis is blurred over fewer pixels


def test_bias_alone_is_a_smooth_multiplicative_field():
    tissues, values = phantom(4), [100.0, 300.0, 450.0, 600.0]
    signature = signature_for("GE", "MRI", strength=2.0).only("bias")
    amplitude = signature.bias.amplitude
    ratio = acquire(tissues, values, signature, seed=1) / acquire(tissues, values, signature.only(), seed=1)
    assert ratio.min() >= 1 - amplitude - 1e-5 and ratio.max() <= 1 + amplitude + 1e-5
    assert ratio.max() - ratio.min() > amplitude  # the field spans a good part of +-amplitude
    assert high_frequency_energy(ratio) < 1e-4 < high_frequency_energy(tissues.astype(float))
    borders = ndimage.morphological_gradient(tissues, size=2)[:-1] > 0
    steps = np.abs(np.diff(ratio, axis=0))
    assert steps[borders].mean() < 1.5 * steps[~borders].mean()  # no jumps where tissues meet


def test_transfer_alone_preserves_the_rank_order_of_pixels():
    tissues = np.arange(64 * 64).reshape(64, 64) % 40
    values = np.random.default_rng(0).uniform(-50, 800, 40)
    for vendor in VENDORS:
        signature = signature_for(vendor, "MRI", strength=3.0)
        assert signature.transfer.gamma != 1
        shifted = acquire(tissues, values, signature.only("psf", "transfer"), seed=0)
        reference = acquire(tissues, values, signature.only("psf"), seed=0)
        order = np.argsort(reference.ravel(), kind="stable")
        assert np.all(np.diff(shifted.ravel()[order]) >= -1e-3)
        assert not np.allclose(zscore(shifted), zscore(reference), atol=0.05)  # and it is not just affine


def test_contrast_remap_is_increasing_keeps_the_range_and_changes_relative_contrast():
    u = np.linspace(0, 1, 1001)
    for vendor in VENDORS:
        contrast = signature_for(vendor, "MRI", strength=3.0).contrast
        remapped = contrast.remap(u)
        assert np.all(np.diff(remapped) > 0) and remapped[0] == 0 and remapped[-1] == pytest.approx(1)
        assert np.abs(remapped - u).max() > 0.02  # it does change the contrast between tissues
    assert np.allclose(signature_for("GE", "MRI", strength=0.0).contrast.remap(u), u)


def _tissue_means(tissues: np.ndarray, values: list[float], signature: ScannerSignature, seeds: range) -> np.ndarray:
    """Mean acquired intensity of each tissue label, pooled over images acquired with ``seeds``."""
    images = [acquire(tissues, values, signature, seed=s) for s in seeds]
    return np.array([np.mean([im[tissues == t].mean() for im in images]) for t in range(len(values))])


@pytest.mark.parametrize("modality", ["MRI", "CT", "X-ray"])
@pytest.mark.parametrize("strength", [1.0, 1.5])
def test_no_vendor_reorders_the_tissues(modality, strength):
    """Vendors stretch or compress contrast but never make a darker tissue brighter (the old per-tissue gains did).

    The intensity components (contrast, transfer, noise) are checked; blur and bias are spatial
    and move a small lesion's mean by partial volume or by where it sits, not by its tissue.
    """
    tissues, values = phantom(5), INTENSITIES[modality]
    for vendor in VENDORS:
        signature = signature_for(vendor, modality, strength=strength).only("contrast", "transfer", "noise")
        means = _tissue_means(tissues, values, signature, range(3))
        assert np.array_equal(np.argsort(means), np.argsort(values)), (vendor, means)


def test_vendors_differ_in_relative_contrast():
    tissues, values = phantom(5), INTENSITIES["MRI"]

    def lesion_over_organ_contrast(vendor: str) -> float:
        means = _tissue_means(tissues, values, signature_for(vendor, "MRI").only("contrast"), range(1))
        return (means[3] - means[2]) / (means[2] - means[1])

    contrasts = [lesion_over_organ_contrast(v) for v in VENDORS]
    assert max(contrasts) > 1.2 * min(contrasts) and min(contrasts) > 0


def test_kspace_truncation_blurs_and_rings_at_edges():
    tissues = np.zeros((64, 64), np.int64)
    tissues[:, 32:] = 1
    truncated = acquire(tissues, [0.0, 100.0], ScannerSignature(psf=Psf(kspace=0.5)).only("psf"), seed=0)
    row = truncated[32]
    assert row[:28].min() < -2 and row[36:].max() > 102  # Gibbs over- and undershoot next to the edge
    assert 10 < row[31] < 90 or 10 < row[32] < 90  # and a soft edge
    assert np.abs(row[:16]).max() < 2 and np.abs(row[48:] - 100).max() < 2  # no ringing from the image border


def test_noise_variation_makes_the_noise_level_vary_across_the_image():
    tissues, values = np.ones((128, 128), np.int64), [0.0, 100.0]
    uniform = acquire(tissues, values, ScannerSignature(noise=Noise(level=0.05)), seed=0) - 100
    varying = acquire(tissues, values, ScannerSignature(noise=Noise(level=0.05, variation=0.8)), seed=0) - 100

    def local_sd_spread(noise):
        sd = np.array([block.std() for rows in np.split(noise, 8) for block in np.split(rows, 8, axis=1)])
        return sd.max() / sd.min()

    assert local_sd_spread(uniform) < 1.6 < 3 < local_sd_spread(varying)


def test_twin_signature_switches_vendor_components_and_keeps_the_neutral_rest():
    neutral = MODALITY_DEFAULTS["MRI"].neutral
    only_noise = twin_signature("GE", "MRI", TwinSettings(components=["noise"]))
    full = twin_signature("GE", "MRI", TwinSettings())
    assert full == signature_for("GE", "MRI")
    assert only_noise.noise == full.noise != neutral.noise
    assert (only_noise.contrast, only_noise.psf, only_noise.bias, only_noise.transfer) == (
        neutral.contrast,
        neutral.psf,
        neutral.bias,
        neutral.transfer,
    )
    assert twin_signature("GE", "MRI", TwinSettings(seed=4), seed=7) == signature_for("GE", "MRI", seed=7)


def test_twin_components_setting_is_canonical_validated_and_keys_the_twin_cache():
    from harmonia_plugins.cohorts.mnms import MnmsCohort

    assert TwinSettings(components=["noise", "contrast", "noise"]).components == ("contrast", "noise")
    assert TwinSettings().components == COMPONENTS
    with pytest.raises(ValidationError, match="components"):
        TwinSettings(components=["blur"])
    folders = {twin_folder(MnmsCohort, TwinSettings(components=c)) for c in (COMPONENTS, ["psf"], ["psf", "psf"])}
    assert len(folders) == 2


def test_noise_level_texture_and_rician_magnitude():
    tissues, values = np.ones((128, 128), np.int64), [0.0, 100.0]
    white = acquire(tissues, values, ScannerSignature(noise=Noise(level=0.05)), seed=0) - 100
    textured = acquire(tissues, values, ScannerSignature(noise=Noise(level=0.05, correlation=2.0)), seed=0) - 100
    assert white.std() == pytest.approx(5.0, rel=0.05) and textured.std() == pytest.approx(5.0, rel=0.05)

    def neighbour_correlation(x):
        return np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]

    assert abs(neighbour_correlation(white)) < 0.05 and neighbour_correlation(textured) > 0.8
    background = np.zeros((128, 128), np.int64)
    magnitude = acquire(background, values, ScannerSignature(noise=Noise(level=0.05, rician=True)), seed=0)
    assert magnitude.min() >= 0 and magnitude.mean() == pytest.approx(5.0 * np.sqrt(np.pi / 2), rel=0.05)


def test_fields_are_normalised_and_seeded():
    rng = np.random.default_rng
    field = smooth_field((40, 50, 30), 0.5, rng(0))
    assert field.shape == (40, 50, 30) and np.abs(field).max() == pytest.approx(1.0) and abs(field.mean()) < 1e-5
    assert np.array_equal(field, smooth_field((40, 50, 30), 0.5, rng(0)))
    assert np.abs(np.diff(smooth_field((64, 64), 0.1, rng(0)))).mean() > np.abs(np.diff(field)).mean()
    assert textured_noise((64, 64), 1.5, rng(0)).std() == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("shape", [(40, 50, 30), (9, 96, 64), (77, 5)])
def test_smooth_field_is_the_cubic_spline_zoom_of_its_coarse_grid(shape):
    """The separable evaluation equals n-D ``ndimage.zoom`` of the same coarse draws (up to float rounding)."""
    from scipy import ndimage

    field = smooth_field(shape, 0.3, np.random.default_rng(7), spacing=1.5)
    coarse = np.random.default_rng(7).standard_normal(
        tuple(max(2, int(np.ceil(n / (0.3 * max(shape)))) + 1) for n in shape)
    )
    zoomed = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=3, mode="nearest")
    zoomed -= zoomed.mean()
    np.testing.assert_allclose(field, zoomed / np.abs(zoomed).max(), atol=1e-6)


def test_volumes_are_acquired_like_slices():
    tissues = np.zeros((24, 32, 32), np.int64)
    tissues[4:20, 8:24, 8:24] = 1
    tissues[10:14, 12:18, 12:18] = 2
    image = acquire(tissues, [0.0, 200.0, 500.0], signature_for("Siemens", "MRI"), seed=0, spacing=(3.0, 1.0, 1.0))
    assert image.shape == tissues.shape and image.dtype == np.float32
    assert image[tissues == 2].mean() != image[tissues == 1].mean()


# ------------------------------------------------------------------------------------------------
# the vendor effects the twins rely on
# ------------------------------------------------------------------------------------------------


def test_histogram_matching_undoes_style_shifts_but_not_blur_or_noise():
    tissues, values = phantom(6, 96), INTENSITIES["MRI"]
    neutral = signature_for("reference", "MRI", strength=0.0)
    style = signature_for("GE", "MRI", strength=1.5, components={"contrast": 0, "psf": 0, "noise": 0})
    assert style.transfer.gamma != 1 and style.bias.amplitude > 0.1
    blur = neutral.model_copy(update={"psf": Psf(sigma=2.0)})
    noise = neutral.model_copy(update={"noise": neutral.noise.model_copy(update={"level": 3 * neutral.noise.level})})

    reference = acquire(tissues, values, neutral, seed=1)
    interior = ndimage.binary_erosion(tissues == 1, iterations=3)
    borders = ndimage.morphological_gradient(tissues, size=2)[:-1] > 0

    def relative_to_reference(image):
        """|difference| to the reference over the noise floor; edge contrast and flat-tissue noise vs the reference."""
        floor = np.abs(acquire(tissues, values, neutral, seed=2) - reference).mean()
        edges = np.abs(np.diff(image, axis=0))[borders].mean() / np.abs(np.diff(reference, axis=0))[borders].mean()
        return np.abs(image - reference).mean() / floor, edges, image[interior].std() / reference[interior].std()

    def before_and_after(signature):
        image = acquire(tissues, values, signature, seed=2)
        return relative_to_reference(image), relative_to_reference(match_histograms(image, reference))

    (difference, edges, _), (difference_after, edges_after, _) = before_and_after(style)
    assert difference > 3 and edges < 0.8  # a large shift, which matching undoes
    assert difference_after < 1.35 and 0.9 < edges_after < 1.15
    (_, edges, _), (_, edges_after, _) = before_and_after(blur)
    assert edges < 0.6 and edges_after < 0.88  # blurred edges stay blurred
    (_, _, noise_sd), (_, _, noise_sd_after) = before_and_after(noise)
    assert noise_sd > 2.5 and noise_sd_after > 1.4  # and flat tissue stays noisier


def test_vendor_difference_after_z_scoring_is_largest_for_mri_and_smallest_for_ct():
    pairs = [("Siemens", "GE"), ("Siemens", "Philips"), ("GE", "Philips")]
    difference = {}
    for modality, values in INTENSITIES.items():
        difference[modality] = np.mean(
            [
                np.abs(
                    zscore(acquire(phantom(s), values, signature_for(a, modality), seed=s))
                    - zscore(acquire(phantom(s), values, signature_for(b, modality), seed=s))
                ).mean()
                for a, b in pairs
                for s in range(4)
            ]
        )
    assert difference["MRI"] > difference["X-ray"] > difference["CT"]
    assert difference["MRI"] > 5 * difference["CT"]


def _histogram_features(image: np.ndarray) -> np.ndarray:
    return np.histogram(zscore(image), bins=24, range=(-3, 3), density=True)[0]


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Weights (last one the bias) of an L2-regularised logistic regression."""

    def loss_and_gradient(w):
        logit = x @ w[:-1] + w[-1]
        residual = 1 / (1 + np.exp(-logit)) - y
        loss = np.mean(np.logaddexp(0, logit) - y * logit) + l2 * w[:-1] @ w[:-1]
        return loss, np.r_[x.T @ residual / len(y) + 2 * l2 * w[:-1], residual.mean()]

    return optimize.minimize(loss_and_gradient, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B").x


def _probe_auroc(vendors: tuple[str, str], strength: float, per_vendor: int = 40) -> float:
    """AUROC of a histogram probe trained and tested on disjoint random phantoms of two MRI vendors."""

    def dataset(first_seed):
        features, labels = [], []
        for label, vendor in enumerate(vendors):
            signature = signature_for(vendor, "MRI", strength=strength)
            for s in range(first_seed + 1000 * label, first_seed + 1000 * label + per_vendor):
                features.append(_histogram_features(acquire(phantom(s), INTENSITIES["MRI"], signature, seed=s)))
                labels.append(label)
        return np.array(features), np.array(labels)

    (x_train, y_train), (x_test, y_test) = dataset(0), dataset(500)
    mean, sd = x_train.mean(0), x_train.std(0) + 1e-6
    w = _fit_logistic((x_train - mean) / sd, y_train)
    score = (x_test - mean) / sd @ w[:-1]
    return stats.mannwhitneyu(score[y_test == 1], score[y_test == 0]).statistic / (per_vendor * per_vendor)


def test_a_simple_probe_names_the_mri_vendor_but_not_at_strength_zero():
    assert _probe_auroc(("Siemens", "GE"), strength=1.0) > 0.95
    assert _probe_auroc(("Siemens", "GE"), strength=0.0) < 0.75


def test_components_constant_lists_every_signature_field():
    assert set(COMPONENTS) == set(ScannerSignature.model_fields)


def test_a_twin_another_process_finished_first_is_kept_not_replaced(tmp_path, monkeypatch):
    """Two workers writing one twin at once: the second to finish keeps the first's copy (it may be being read)."""
    settings = TwinSettings(patients=3, seed=5)
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "other"))
    theirs = datasource.ensure_twin(ToyCohort, settings)  # what the other process wrote
    monkeypatch.setenv("HARMONIA_CACHE", str(tmp_path / "shared"))
    folder = datasource.twin_folder(ToyCohort, settings)
    marker = folder / datasource.COMPLETE_MARKER
    write, placed = datasource.write_labelled_twin, []

    def slower(cohort_cls, tmp, twin):
        shutil.copytree(theirs, folder)  # the other process finishes while this one writes
        placed.append(marker.stat().st_ino)
        write(cohort_cls, tmp, twin)

    monkeypatch.setattr(datasource, "write_labelled_twin", slower)
    assert datasource.ensure_twin(ToyCohort, settings) == folder
    assert marker.stat().st_ino == placed[0] and datasource.is_intact(folder)  # theirs kept, not replaced
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temporary folder left
