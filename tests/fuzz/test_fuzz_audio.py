"""Fuzzing data_modules.audio.read_audio: random bytes with a .wav/.flac suffix, real WAV/FLAC files
(a tone written with soundfile: mono/stereo, PCM/float, several rates) truncated or with corrupted
header bytes, NaN/inf samples in float WAVs, zero frames. read_audio returns a finite float32 mono
tensor, or raises a ValueError naming the file; never another exception, never a hang.

ci profile: 50 examples per test (4 property tests -> 200 examples) plus regression tests."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, strategies as st

from data_modules.audio import read_audio

from .conftest import listing, time_limit

RATE = 8000


def tone(n: int, channels: int, rate: int = RATE) -> np.ndarray:
    t = np.arange(n) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def check(path: Path):
    before = listing(path.parent)
    try:
        with time_limit():
            wave = read_audio(path, RATE)
    except ValueError as err:
        assert str(path) in str(err), err
        wave = None
    assert listing(path.parent) == before
    if wave is not None:
        assert isinstance(wave, torch.Tensor) and wave.dtype == torch.float32 and wave.ndim == 1
        assert wave.numel() > 0 and torch.isfinite(wave).all()
    return wave


@given(st.binary(max_size=400), st.sampled_from([".wav", ".flac"]),
       st.sampled_from([b"", b"RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC"]))
def test_random_bytes(data, suffix, prefix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(prefix + data)
        check(path)


FORMATS = [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_U8"), ("FLAC", "PCM_16")]


@given(st.integers(0, 400), st.integers(1, 3), st.sampled_from(FORMATS), st.sampled_from([8000, 16000, 11025]),
       st.data())
def test_truncated_or_corrupted_real_file(n, channels, fmt, rate, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.wav" if fmt[0] == "WAV" else "x.flac")
        sf.write(str(path), tone(n, channels, rate), rate, format=fmt[0], subtype=fmt[1])
        raw = bytearray(path.read_bytes())
        how = data.draw(st.sampled_from(["as_is", "truncate", "flip_header", "flip_any"]), label="how")
        if how == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw)), label="cut")]
        elif how in ("flip_header", "flip_any") and raw:
            hi = min(len(raw), 64) if how == "flip_header" else len(raw)
            for _ in range(data.draw(st.integers(1, 3), label="n")):
                i = data.draw(st.integers(0, hi - 1), label="at")
                raw[i] = data.draw(st.integers(0, 255), label="byte")
        path.write_bytes(bytes(raw))
        wave = check(path)
        if how == "as_is":
            if n == 0:
                assert wave is None  # zero frames: an error
            else:
                assert wave is not None and len(wave) == (n if rate == RATE else wave.numel())
                if rate == RATE and fmt[1] in ("FLOAT", "PCM_16"):
                    want = tone(n, channels).mean(axis=1)
                    assert np.allclose(wave.numpy(), want, atol=1e-3)


@given(st.integers(1, 200), st.integers(1, 2), st.lists(st.tuples(st.integers(0, 199), st.integers(0, 1),
                                                                  st.sampled_from([np.nan, np.inf, -np.inf])),
                                                        max_size=3))
def test_nan_samples_in_float_wav(n, channels, bad):
    wave = tone(n, channels)
    for i, c, v in bad:
        wave[i % n, c % channels] = v
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        sf.write(str(path), wave, RATE, subtype="FLOAT")
        got = check(path)
        assert (got is None) == bool(bad)


@given(st.integers(1, 100), st.one_of(st.integers(0, 2**32 - 1), st.integers(1, 200_000),
                                     st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000])))
def test_any_header_sample_rate(n, rate):
    """The sample-rate field of a WAV header set to any 32-bit value."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        sf.write(str(path), tone(n, 1), RATE, subtype="PCM_16")
        raw = bytearray(path.read_bytes())
        raw[24:28] = struct.pack("<I", rate)
        path.write_bytes(bytes(raw))
        check(path)


# -- regression tests: failing examples the fuzzing found ----------------------------------------


def _wav_with_rate(folder: Path, rate: int) -> Path:
    path = folder / "x.wav"
    sf.write(str(path), tone(1, 1), RATE, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    raw[24:28] = struct.pack("<I", rate)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("rate", [5697682, 24987])
def test_regression_header_rate_that_cannot_be_resampled(tmp_path, rate):
    """A header rate of 5697682 Hz made torchaudio's resample allocate 45 GB (RuntimeError from the
    allocator); 24987 Hz (coprime with 8000) a ~1 GB kernel and 4.5 s for a 1-sample clip."""
    path = _wav_with_rate(tmp_path, rate)
    with time_limit(5), pytest.raises(ValueError, match=rf"{path}: the header gives sample rate {rate} Hz"):
        read_audio(path, RATE)


def test_usual_rates_still_resample(tmp_path):
    for rate in (44100, 22050, 48000, 16000):
        wave = read_audio(_wav_with_rate(tmp_path, rate), RATE)
        assert wave.ndim == 1 and torch.isfinite(wave).all()
