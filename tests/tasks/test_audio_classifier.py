"""The log-mel CNN clip classifier: padding never counts, it learns two tones from the audio data
module in a few dozen CPU steps, and its checkpoint holds plain data."""

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch

from data_modules.audio import AudioDataModule
from tasks.audio_classifier import AudioClassifierTask

SR = 8000
TINY = {"n_mels": 32, "channels": (8, 16)}


def write_tones(root, speakers=("ann", "bob", "cat", "dan"), per_class=6, seed=0):
    """FSDD-style names `{class}_{speaker}_{index}.wav`: class 0 a 300 Hz tone burst, class 1 a
    1200 Hz one (Hann envelope after a random silence, like a word in a clip), random level,
    phase and length (0.2-0.5 s), a little noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for spk in speakers:
        for label, freq in ((0, 300.0), (1, 1200.0)):
            for i in range(per_class):
                n = int(rng.integers(int(0.2 * SR), int(0.5 * SR)))
                t = np.arange(n) / SR
                onset = int(rng.integers(0, n // 3))
                envelope = np.zeros(n)
                envelope[onset:] = np.hanning(n - onset)
                wave = rng.uniform(0.1, 0.8) * envelope * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
                wave += 0.01 * rng.standard_normal(n)
                sf.write(root / f"{label}_{spk}_{i}.wav", wave.astype(np.float32), SR, subtype="PCM_16")
    return root


def test_zero_padding_past_length_changes_no_logit():
    torch.manual_seed(0)
    task = AudioClassifierTask(num_classes=3, sample_rate=SR, **TINY).eval()
    lengths = torch.tensor([4000, 2501, 777, 160])
    clips = [0.3 * torch.randn(int(n)) for n in lengths]
    padded = torch.zeros(len(clips), 4000)
    for i, c in enumerate(clips):
        padded[i, : len(c)] = c
    with torch.no_grad():
        batched = task(padded, lengths)
        alone = torch.cat([task(c[None]) for c in clips])  # unpadded, one at a time
        # what lies past `length` is never read, zeros or not
        noisy = padded.clone()
        for i, n in enumerate(lengths):
            noisy[i, n:] = torch.randn(4000 - int(n))
        batched_noisy = task(noisy, lengths)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched_noisy, alone, atol=1e-5, rtol=1e-5)
    # without `length` the padding is part of the clip: the logits do change
    with torch.no_grad():
        assert not torch.allclose(task(padded), alone, atol=1e-3)


def test_learns_two_tones_from_the_audio_module(tmp_path):
    """Speaker-disjoint split of a synthetic two-tone set; ~40 steps reach near-perfect accuracy
    and macro F1 on the held-out speaker."""
    root = write_tones(tmp_path / "tones")
    dm = AudioDataModule(root=str(root), sample_rate=SR, num_samples=4000, split="speaker",
                         val_speakers=["cat"], test_speakers=["dan"], batch_size=8)
    pl.seed_everything(0)
    task = AudioClassifierTask(num_classes=dm.num_classes, sample_rate=dm.sample_rate, class_names=dm.class_names,
                               lr=3e-3, warmup_steps=5, **TINY)
    trainer = pl.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         check_val_every_n_epoch=None, val_check_interval=20, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    (metrics,) = trainer.test(task, datamodule=dm, verbose=False)
    assert metrics["test/acc"] >= 0.9 and metrics["test/f1"] >= 0.9, metrics

    # checkpoint: plain-data hyper-parameters, reloadable with weights_only=True, same logits
    path = tmp_path / "clf.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    hp = raw["hyper_parameters"]
    assert hp["sample_rate"] == SR and hp["num_classes"] == 2 and hp["class_names"] == ["0", "1"]
    assert hp["n_mels"] == 32 and isinstance(hp["channels"], list)
    again = AudioClassifierTask.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    batch = next(iter(dm.test_dataloader()))
    task.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch["waveform"], batch["length"]), task(batch["waveform"], batch["length"]))


def test_unlabelled_clips_are_left_out_of_the_loss():
    torch.manual_seed(0)
    task = AudioClassifierTask(num_classes=2, sample_rate=SR, **TINY)
    wave = 0.1 * torch.randn(3, 800)
    length = torch.tensor([800, 800, 400])
    full = {"waveform": wave, "length": length, "class_label": torch.tensor([0, 1, -1])}
    part = {"waveform": wave[:2], "length": length[:2], "class_label": torch.tensor([0, 1])}
    task.eval()  # no dropout
    with torch.no_grad():
        assert math.isclose(task.training_step(full, 0).item(), task.training_step(part, 0).item(), rel_tol=1e-6)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="class_names"):
        AudioClassifierTask(num_classes=2, sample_rate=SR, class_names=["a"])
    with pytest.raises(ValueError, match="at least 2"):
        AudioClassifierTask(num_classes=1, sample_rate=SR)
