"""The CUDA path of the engine: mixed precision (bf16 where the GPU has it, else fp16 with a gradient scaler) and
channels-last 2-D convolutions. Runs only where CUDA exists; CI's machines have none, the lent GPU machine does."""

from __future__ import annotations

import math

import pytest
import torch
from test_engine import TASK, toy_set
from toy_plugins import PixelAccuracy, ToyNet, ToyNetParams

from harmonia.api import NoParams
from harmonia.engine import Trainer
from harmonia.settings import TrainSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _trainer(amp: bool, channels_last: bool = True) -> Trainer:
    torch.manual_seed(0)
    model = ToyNet(ToyNetParams(width=4), TASK)
    settings = TrainSpec(epochs=3, batch_size=8, lr=0.01, device="cuda", amp=amp, channels_last=channels_last)
    return Trainer(model, [], PixelAccuracy(NoParams(), TASK), settings, torch.device("cuda"))


def test_training_runs_under_autocast_in_the_gpu_s_half_precision():
    trainer = _trainer(amp=True)
    seen: list[torch.dtype] = []
    first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    result = trainer.fit(toy_set(), toy_set(seed=1), None)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert seen and set(seen) == {expected}
    assert all(math.isfinite(e.train_loss) for e in result.history)
    predicted, probabilities = trainer.predict(toy_set(seed=2).images, with_probabilities=True)
    assert predicted.device.type == "cpu" and probabilities.dtype == torch.float32


def test_amp_off_trains_in_float32_and_the_weights_are_channels_last():
    trainer = _trainer(amp=False)
    seen: list[torch.dtype] = []
    first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    trainer.fit(toy_set(), toy_set(seed=1), None)
    assert set(seen) == {torch.float32}
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_mixed_precision_learns_what_full_precision_learns():
    val = toy_set(seed=1)
    scores = {}
    for amp in (False, True):
        trainer = _trainer(amp=amp)
        trainer.fit(toy_set(n=48), val, None)
        scores[amp] = trainer._validation_score(val)[1]
    assert scores[True] > 0.8 and abs(scores[True] - scores[False]) < 0.1
