import csv
import logging
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from data_modules import AudioCodec, AudioDataModule, read_audio
from data_modules.audio import IGNORE_INDEX, change_speed, collate_next_sample, normalize_wave

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def write_wav(path: Path, data, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(data, dtype=np.float32), rate, subtype=subtype)
    return path


def tone(n: int, rate: int = 16000, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)


# -- codec ------------------------------------------------------------------------------------------
def mu_law_oracle(x: np.ndarray, mu: int) -> np.ndarray:
    """Independent formula: y = sign(x) ln(1 + mu|x|) / ln(1 + mu) in [-1, 1], mapped to 0..mu by rounding."""
    x = np.clip(x.astype(np.float64), -1, 1)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.floor((y + 1) / 2 * mu + 0.5).astype(np.int64)


def mu_law_inverse(y: np.ndarray, mu: int) -> np.ndarray:
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


@pytest.mark.parametrize("bits", [8, 4])
def test_mu_law_matches_formula_and_round_trip_bound(bits):
    codec = AudioCodec("mu_law", bits)
    mu = 2**bits - 1
    assert codec.vocab_size == 2**bits
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(20000, generator=g) * 2 - 1,  # uniform
                   (torch.rand(5000, generator=g) * 2 - 1) * 1e-3,  # near zero, where the steps are fine
                   torch.tensor([-1.0, 1.0, 0.0, 1e-7, -1e-7])])
    ids = codec.encode(x)
    assert ids.dtype == torch.long and int(ids.min()) >= 0 and int(ids.max()) < 2**bits
    oracle = mu_law_oracle(x.double().numpy(), mu)
    # float32 vs float64 may round a value lying exactly on a level boundary differently
    assert np.mean(ids.numpy() == oracle) > 0.999 and np.abs(ids.numpy() - oracle).max() <= 1
    # decode(encode(x)) is within the step of the mu-law curve at x: encoding rounds y to the nearest
    # level (error <= 1/mu in y), so |x - x_hat| <= f^-1(|y| + 1/mu) - f^-1(|y|) (f^-1 is convex)
    x_hat = codec.decode(ids).double().numpy()
    xd = x.double().numpy()
    y = np.abs(np.log1p(mu * np.abs(xd)) / np.log1p(mu))
    bound = mu_law_inverse(np.minimum(y + 1 / mu, 1 + 1 / mu), mu) - mu_law_inverse(y, mu)
    assert np.all(np.abs(xd - x_hat) <= bound * (1 + 1e-4) + 1e-6)
    # and the ids survive decode -> encode
    assert torch.equal(codec.encode(codec.decode(ids)), ids)


def test_linear_codec_and_clamping():
    codec = AudioCodec("linear", 8)
    x = torch.linspace(-1, 1, 10001)
    ids = codec.encode(x)
    assert int(ids.min()) == 0 and int(ids.max()) == 255
    assert (codec.decode(ids) - x).abs().max() <= 1 / 255 + 1e-6  # half a step of 2/255
    assert torch.equal(codec.encode(torch.tensor([-5.0, 5.0])), torch.tensor([0, 255]))
    assert torch.equal(AudioCodec("mu_law").encode(torch.tensor([[-3.0, 3.0]])), torch.tensor([[0, 255]]))
    assert AudioCodec("mu_law").pad_id == 128 and codec.pad_id == 128  # id of 0.0
    with pytest.raises(ValueError, match="ids must lie"):
        codec.decode(torch.tensor([256]))
    with pytest.raises(ValueError, match="mu_law"):
        AudioCodec("a_law")


# -- reading ----------------------------------------------------------------------------------------
def test_resample_8k_to_16k_keeps_frequency(tmp_path):
    f = write_wav(tmp_path / "sine.wav", tone(8000, rate=8000, freq=440.0), rate=8000)
    notes = Counter()
    wave = read_audio(f, 16000, notes=notes)
    assert wave.dtype == torch.float32 and wave.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    peak_hz = np.argmax(spectrum) * 16000 / len(wave)
    assert abs(peak_hz - 440.0) <= 1.0
    assert notes == {"resampled from 8000 Hz to 16000 Hz": 1}
    assert abs(wave.abs().max().item() - 0.5) < 0.02  # amplitude kept


def test_stereo_is_downmixed_to_channel_mean(tmp_path):
    rng = np.random.default_rng(0)
    data = np.stack([tone(1000), rng.uniform(-0.4, 0.4, 1000)], axis=1)
    f = write_wav(tmp_path / "stereo.wav", data, subtype="FLOAT")
    notes = Counter()
    wave = read_audio(f, 16000, notes=notes)
    assert torch.allclose(wave, torch.from_numpy(data.astype(np.float32).mean(axis=1)), atol=1e-7)
    assert notes == {"down-mixed 2 channels to mono (their mean)": 1}


def make_bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    zero = write_wav(folder / "zero_length.wav", np.zeros(0))
    nan = write_wav(folder / "nan.wav", np.array([0.1, np.nan, 0.2]), subtype="FLOAT")
    return {"corrupt": corrupt, "empty": empty, "zero": zero, "nan": nan}


@pytest.mark.parametrize("kind,message", [("corrupt", "cannot decode"), ("empty", "empty"),
                                          ("zero", "no audio samples"), ("nan", "sample 1")])
def test_bad_files_raise_naming_the_file(tmp_path, kind, message):
    f = make_bad_files(tmp_path)[kind]
    with pytest.raises(ValueError, match=message) as err:
        read_audio(f, 16000)
    assert str(f) in str(err.value)
    assert read_audio(f, 16000, on_bad="skip") is None
    with pytest.raises(ValueError, match="not found"):
        read_audio(tmp_path / "missing.wav", 16000)


def test_data_module_bad_file_error_and_skip(tmp_path, caplog):
    root = tmp_path / "clips"
    for i in range(6):
        write_wav(root / f"good_{i}.wav", tone(800 + 100 * i))
    bad = make_bad_files(root)
    with pytest.raises(ValueError, match="corrupt.wav") as err:
        AudioDataModule(root=str(root), split="random", num_samples=1000).setup()
    assert "on_bad_file=skip" in str(err.value)
    dm = AudioDataModule(root=str(root), split="random", num_samples=1000, on_bad_file="skip")
    with caplog.at_level(logging.WARNING, logger="data_modules.audio"):
        dm.setup()
    assert sorted(p for p, _ in dm.skipped) == sorted(str(p) for p in bad.values())
    assert sum(len(s) for s in dm.sets.values()) == 6
    assert "skipped 4 of 10" in caplog.text
    for p in bad.values():
        assert str(p) in caplog.text


def test_wrong_rate_files_are_resampled_and_logged_once(tmp_path, caplog):
    root = tmp_path / "mixed"
    for i in range(3):
        write_wav(root / f"a{i}.wav", tone(800), rate=16000)
        write_wav(root / f"b{i}.wav", tone(400, rate=8000), rate=8000)
    dm = AudioDataModule(root=str(root), split="random", num_samples=2000, val_fraction=0.2, test_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="data_modules.audio"):
        dm.setup()
    lengths = {Path(c.path).name: len(w) for s in dm.sets.values() for c, w in zip(s.clips, s.waves)}
    assert lengths == {**{f"a{i}.wav": 800 for i in range(3)}, **{f"b{i}.wav": 800 for i in range(3)}}
    assert caplog.text.count("resampled from 8000 Hz to 16000 Hz for 3 files") == 1


# -- batches ----------------------------------------------------------------------------------------
@pytest.fixture
def short_clips(tmp_path) -> Path:
    root = tmp_path / "short"
    for i, n in enumerate([50, 120, 300, 64, 200, 90, 30, 256]):
        write_wav(root / f"c{i}.wav", tone(n, amp=0.3 + 0.05 * i))
    return root


def test_batch_shapes_padding_and_shift(short_clips):
    n = 128
    dm = AudioDataModule(root=str(short_clips), split="random", num_samples=n, batch_size=8,
                         val_fraction=0.25, test_fraction=0.25)
    assert dm.vocab_size == 256 and dm.sample_rate == 16000
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        b = next(iter(loader))
        B = len(b["path"])
        assert b["input_ids"].shape == b["labels"].shape == b["mask"].shape == (B, n - 1)
        assert b["input_ids"].dtype == b["labels"].dtype == torch.long and b["mask"].dtype == torch.bool
        assert b["waveform"].shape == (B, n) and b["waveform"].dtype == torch.float32
        assert b["length"].shape == (B,) and b["length"].dtype == torch.long
        assert b["class_label"].tolist() == [-1] * B and dm.num_classes == 0  # no labels in these names
        assert b["speaker"] == [""] * B
        length = b["length"]
        pos = torch.arange(n - 1)
        assert torch.equal(b["mask"], pos[None] < length[:, None])
        assert torch.equal(b["labels"] == IGNORE_INDEX, pos[None] + 1 >= length[:, None])
        assert torch.equal(b["mask"].sum(1), length.clamp(max=n - 1))
        target_real = b["labels"] != IGNORE_INDEX
        assert torch.equal(b["input_ids"][:, 1:][target_real[:, :-1]], b["labels"][:, :-1][target_real[:, :-1]])
        pad = ~b["mask"]
        assert (b["input_ids"][pad] == dm.codec.pad_id).all()
        assert (b["waveform"][:, 1:][pad] == 0).all()
        # the tokens are the codec's encoding of the waveform
        assert torch.equal(b["input_ids"][b["mask"]], dm.codec.encode(b["waveform"][:, :-1])[b["mask"]])
    real = {Path(c.path).name: len(w) for s in dm.sets.values() for c, w in zip(s.clips, s.waves)}
    assert sorted(real.values()) == [30, 50, 64, 90, 120, 200, 256, 300]


def test_pad_with_silence_makes_the_padding_part_of_the_clip(short_clips):
    """pad_with=silence: every position is input and target, and the padded targets are the
    codec's code for 0.0 (what a generator must emit after the utterance)."""
    n = 128
    kw = dict(root=str(short_clips), split="random", num_samples=n, batch_size=8, val_fraction=0.25,
              test_fraction=0.25)
    masked = next(iter(AudioDataModule(**kw).test_dataloader()))
    silent_dm = AudioDataModule(**kw, pad_with="silence")
    silent = next(iter(silent_dm.test_dataloader()))
    assert masked["path"] == silent["path"]
    assert (masked["labels"] == IGNORE_INDEX).any()  # some test clip is shorter than n
    assert silent["mask"].all() and (silent["labels"] != IGNORE_INDEX).all() and (silent["length"] == n).all()
    assert torch.equal(silent["input_ids"], masked["input_ids"])
    was_padding = masked["labels"] == IGNORE_INDEX
    assert torch.equal(silent["labels"][~was_padding], masked["labels"][~was_padding])  # real targets unchanged
    assert (silent["labels"][was_padding] == silent_dm.codec.pad_id).all()  # the rest is silence
    with pytest.raises(ValueError, match="pad_with"):
        AudioDataModule(**kw, pad_with="zeros")


def test_collate_label_shift_on_a_hand_example():
    codec = AudioCodec()
    items = [{"tokens": torch.tensor([5, 6, 7, 128, 128]), "waveform": torch.zeros(5), "length": 3,
              "class_label": 2, "speaker": "s", "path": "p"}]
    b = collate_next_sample(items)
    assert b["input_ids"].tolist() == [[5, 6, 7, 128]]
    assert b["labels"].tolist() == [[6, 7, -100, -100]]
    assert b["mask"].tolist() == [[True, True, True, False]]
    assert codec.pad_id == 128


def test_crop_modes(tmp_path):
    root = tmp_path / "long"
    ramp = np.linspace(-0.9, 0.9, 1000)
    for i in range(6):
        write_wav(root / f"r{i}.wav", ramp, subtype="FLOAT")
    kw = dict(root=str(root), split="random", num_samples=100, val_fraction=0.2, test_fraction=0.2)
    dm = AudioDataModule(**kw)
    dm.setup()
    assert torch.allclose(dm.sets["train"][0]["waveform"], torch.tensor(ramp[:100], dtype=torch.float32))
    dm = AudioDataModule(**kw, crop="center")
    dm.setup()
    for part in ("train", "val"):
        assert torch.allclose(dm.sets[part][0]["waveform"], torch.tensor(ramp[450:550], dtype=torch.float32))
    dm = AudioDataModule(**kw, crop="random")
    dm.setup()
    torch.manual_seed(0)
    starts = {int(np.argmin(np.abs(ramp - dm.sets["train"][0]["waveform"][0].item()))) for _ in range(20)}
    assert len(starts) > 5 and max(starts) <= 900
    assert torch.allclose(dm.sets["val"][0]["waveform"], torch.tensor(ramp[:100], dtype=torch.float32))  # eval: start


def test_normalisation_options(tmp_path):
    wave = torch.tensor(tone(1600, amp=0.25), dtype=torch.float32)
    assert torch.equal(normalize_wave(wave, "none"), wave)
    assert normalize_wave(wave, "peak").abs().max().item() == pytest.approx(1.0)
    rms = normalize_wave(wave, "rms", target_rms=0.1)
    assert rms.pow(2).mean().sqrt().item() == pytest.approx(0.1, rel=1e-4)
    loud = normalize_wave(wave, "rms", target_rms=0.9)
    assert loud.abs().max().item() == 1.0  # clipped to [-1, 1]
    silent = torch.zeros(100)
    assert torch.equal(normalize_wave(silent, "peak"), silent) and torch.equal(normalize_wave(silent, "rms"), silent)
    with pytest.raises(ValueError, match="normalize"):
        normalize_wave(wave, "loudness")
    root = tmp_path / "levels"
    for i in range(5):
        write_wav(root / f"x{i}.wav", tone(500, amp=0.1 * (i + 1)))
    dm = AudioDataModule(root=str(root), split="random", num_samples=600, normalize="peak",
                         val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    for s in dm.sets.values():
        for i in range(len(s)):
            assert s[i]["waveform"].abs().max().item() == pytest.approx(1.0)


# -- training augmentation --------------------------------------------------------------------------
def peak_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * rate / len(wave))


@pytest.mark.parametrize("speed", [0.9, 1.1, 1.25])
def test_change_speed_scales_length_and_pitch(speed):
    """Played `speed` times as fast: 1/speed as many samples, every frequency times speed."""
    rate = 8000
    wave = torch.tensor(tone(8000, rate=rate, freq=500.0), dtype=torch.float32)
    out = change_speed(wave, speed)
    assert abs(len(out) - 8000 / speed) <= 1
    assert abs(peak_frequency(out.numpy(), rate) - 500.0 * speed) <= 2 * rate / len(out)
    assert abs(out.abs().max().item() - 0.5) < 0.03  # amplitude kept
    assert change_speed(wave, 1.0) is wave


def test_change_speed_up_does_not_alias():
    """Speeding a 3.8-kHz tone (8-kHz audio, Nyquist 4 kHz) up by 1.25 puts it at 4.75 kHz, above
    Nyquist: a band-limited resampler attenuates it (torchaudio's default windowed sinc: about 26 dB
    this far past its cut-off); linear interpolation folds it back to 3.25 kHz at 0.62 of its rms."""
    wave = torch.tensor(tone(8000, rate=8000, freq=3800.0), dtype=torch.float32)
    out = change_speed(wave, 1.25)[200:-200]  # the filter's edges aside
    assert out.pow(2).mean().sqrt().item() < 0.1 * (0.5 / math.sqrt(2))


def test_augmentation_acts_on_train_only_within_its_ranges(tmp_path):
    root = tmp_path / "tones"
    for i in range(10):
        write_wav(root / f"t{i}.wav", tone(2000, rate=8000, freq=400.0 + 20 * i, amp=0.3), rate=8000)
    kw = dict(root=str(root), sample_rate=8000, split="random", num_samples=3000, val_fraction=0.2,
              test_fraction=0.2, pad_with="mask")
    plain = AudioDataModule(**kw)
    plain.setup()
    dm = AudioDataModule(**kw, speeds=[0.8, 1.0, 1.25], gain_db=6.0)
    dm.setup()
    for part in ("val", "test"):  # evaluation sees the clips as read
        for i in range(len(dm.sets[part])):
            assert torch.equal(dm.sets[part][i]["tokens"], plain.sets[part][i]["tokens"])
    torch.manual_seed(0)
    lengths, gains = Counter(), []
    train, ref = dm.sets["train"], plain.sets["train"]
    for _ in range(200):
        item = train[0]
        lengths[item["length"]] += 1
        n = item["length"]
        # the gain: the item over the same-speed clip; speed 1 is the clip as read
        base = {2000: ref[0]["waveform"][:2000], 1600: change_speed(ref.waves[0], 1.25),
                2500: change_speed(ref.waves[0], 0.8)}[n]
        ratio = item["waveform"][:n].abs().max() / base.abs().max()
        gains.append(20 * math.log10(ratio.item()))
        # tokens are the codec's encoding of the augmented wave
        assert torch.equal(item["tokens"][:n], dm.codec.encode(item["waveform"][:n]))
    assert set(lengths) == {1600, 2000, 2500} and min(lengths.values()) > 40  # each speed ~1/3 of draws
    assert -6.01 <= min(gains) < -4 and 4 < max(gains) <= 6.01  # uniform in [-6, 6] dB
    draws = []
    for _ in range(2):  # the same seed, the same augmented items
        torch.manual_seed(1)
        draws.append(torch.stack([train[i]["tokens"] for i in range(len(train))]))
    assert torch.equal(draws[0], draws[1])


def test_augmentation_options_are_checked(tmp_path):
    root = tmp_path / "t"
    write_wav(root / "a.wav", tone(100))
    for bad in ([], [3.0], ["fast"]):
        with pytest.raises(ValueError, match="data.speeds"):
            AudioDataModule(root=str(root), speeds=bad)
    with pytest.raises(ValueError, match="data.gain_db"):
        AudioDataModule(root=str(root), gain_db=-3)


# -- splits on synthetic names ----------------------------------------------------------------------
def test_unknown_speaker_with_speaker_split_is_an_error(short_clips):
    with pytest.raises(ValueError, match="manifest with a speaker column or use split=random"):
        AudioDataModule(root=str(short_clips)).setup()


def test_speaker_split_errors(tmp_path):
    root = tmp_path / "fsdd_like"
    for spk in ("ann", "bob"):
        for d in range(3):
            write_wav(root / f"{d}_{spk}_7.wav", tone(100))
    with pytest.raises(ValueError, match="at least 3 speakers"):
        AudioDataModule(root=str(root)).setup()
    write_wav(root / "0_cy_7.wav", tone(100))
    with pytest.raises(ValueError, match=re.escape("val_speakers ['zed']")):
        AudioDataModule(root=str(root), val_speakers=["zed"]).setup()
    with pytest.raises(ValueError, match="both val_speakers and test_speakers"):
        AudioDataModule(root=str(root), val_speakers=["ann"], test_speakers=["ann"]).setup()
    with pytest.raises(ValueError, match="no speaker is left for train"):
        AudioDataModule(root=str(root), val_speakers=["ann", "bob"], test_speakers=["cy"]).setup()
    dm = AudioDataModule(root=str(root), num_samples=100)
    dm.setup()
    assert [len({c.speaker for c in dm.sets[p].clips}) for p in ("train", "val", "test")] == [1, 1, 1]
    assert dm.class_names == ["0", "1", "2"]


def test_manifest_with_relative_paths(tmp_path):
    for i in range(9):
        write_wav(tmp_path / "audio" / f"clip{i}.wav", tone(200))
    manifest = tmp_path / "list.tsv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["path", "label", "speaker"])
        for i in range(9):
            w.writerow([f"audio/clip{i}.wav", ["yes", "no"][i % 2], f"spk{i % 3}"])
    dm = AudioDataModule(manifest=str(manifest), num_samples=256, test_speakers=["spk0"])
    dm.setup()
    assert dm.class_names == ["no", "yes"]
    assert {c.speaker for c in dm.sets["test"].clips} == {"spk0"}
    assert sum(len(s) for s in dm.sets.values()) == 9
    with open(manifest, "a") as f:
        f.write("audio/missing.wav\tyes\tspk1\n")
    with pytest.raises(ValueError, match=r"missing.wav.*line 11"):
        AudioDataModule(manifest=str(manifest), num_samples=256).setup()


# -- the shared data --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdd(shared_data):
    dm = AudioDataModule(root=str(shared_data / "audio" / "fsdd"), val_speakers=["lucas"], test_speakers=["nicolas"])
    dm.setup()
    return dm


def test_fsdd_speaker_split_covers_every_file_once(fsdd, shared_data):
    files = sorted(str(p) for p in (shared_data / "audio" / "fsdd").glob("*.wav"))
    assert len(files) == 2000
    listed = [c.path for s in fsdd.sets.values() for c in s.clips]
    assert sorted(listed) == files  # each exactly once
    speakers = {p: {c.speaker for c in fsdd.sets[p].clips} for p in ("train", "val", "test")}
    assert speakers == {"train": {"george", "jackson"}, "val": {"lucas"}, "test": {"nicolas"}}
    assert fsdd.class_names == [str(d) for d in range(10)] and fsdd.num_classes == 10
    for c, label in zip(fsdd.sets["test"].clips, fsdd.sets["test"].class_ids):
        assert Path(c.path).name.startswith(f"{label}_nicolas_")
    b = next(iter(fsdd.val_dataloader()))
    assert b["input_ids"].shape == (16, 15999) and (b["length"] <= 16000).all()
    assert b["length"].max() > 4000  # resampled 8 kHz -> 16 kHz: at least twice the stored samples


def test_fsdd_seeded_speaker_split_and_official(shared_data):
    root = str(shared_data / "audio" / "fsdd")
    dm = AudioDataModule(root=root, max_files=200, seed=3)
    dm.setup()
    spk = {p: {c.speaker for c in dm.sets[p].clips} for p in ("train", "val", "test")}
    assert [len(spk[p]) for p in ("train", "val", "test")] == [2, 1, 1]
    assert not (spk["train"] & spk["val"] or spk["train"] & spk["test"] or spk["val"] & spk["test"])
    dm = AudioDataModule(root=root, max_files=200, split="official")
    dm.setup()
    index = lambda c: int(Path(c.path).stem.split("_")[2])  # noqa: E731
    assert all(index(c) <= 4 for c in dm.sets["test"].clips)
    assert all(index(c) >= 5 for p in ("train", "val") for c in dm.sets[p].clips)


def test_speech_commands_split_is_speaker_disjoint(shared_data):
    root = shared_data / "audio" / "speech_commands_v0.02_test_subset"
    dm = AudioDataModule(root=str(root))
    dm.setup()
    spk = {p: {c.speaker for c in dm.sets[p].clips} for p in ("train", "val", "test")}
    assert not (spk["train"] & spk["val"] or spk["train"] & spk["test"] or spk["val"] & spk["test"])
    assert sum(len(s) for s in dm.sets.values()) == 400
    assert dm.class_names == sorted("yes no up down left right on off stop go".split())
    for p, frac in (("val", 0.1), ("test", 0.1)):
        assert abs(len(dm.sets[p]) - frac * 400) <= 20
    with open(root / "metadata.csv") as f:  # names parsed like the metadata says
        meta = {row["path"]: (row["label"], row["speaker_id"]) for row in csv.DictReader(f)}
    for s in dm.sets.values():
        for c, k in zip(s.clips, s.class_ids):
            assert meta[Path(c.path).relative_to(root).as_posix()] == (dm.class_names[k], c.speaker)
    b = next(iter(dm.train_dataloader()))
    assert (b["length"] == 16000).all() and (b["labels"][:, :-1] != IGNORE_INDEX).all()


# speech_digits at FSDD's own 8 kHz (no interpolated samples), speech_commands at its 16 kHz
@pytest.mark.parametrize("name,rate", [("speech_digits", 8000), ("speech_commands", 16000)])
def test_configs_instantiate(name, rate, shared_data, monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("MAMBA_SEQ_SHARED_DATA", str(shared_data))
    cfg = OmegaConf.create({"seed": 0, "data": OmegaConf.load(CONFIGS / f"{name}.yaml")})
    dm = instantiate(cfg.data, max_files=120)
    assert isinstance(dm, AudioDataModule) and dm.sample_rate == rate and dm.num_samples == rate
    assert dm.hparams.split == "speaker" and dm.vocab_size == 256
    assert math.isclose(dm.val_fraction, 0.1)


def test_speech_experiments_split_and_augment(shared_data, monkeypatch):
    """experiment=speech_digits keeps its held-out speakers; speech_digits_all_speakers trains on all
    four voices (FSDD's official split: recordings 0-4 test). Both augment the training clips only."""
    from hydra.utils import instantiate

    from mamba_seq.cli import compose

    monkeypatch.setenv("MAMBA_SEQ_SHARED_DATA", str(shared_data))
    parts = {}
    for name in ("speech_digits", "speech_digits_all_speakers"):
        cfg = compose([f"experiment={name}"])
        assert list(cfg.data.speeds) == [0.9, 0.95, 1.0, 1.05, 1.1] and cfg.data.gain_db == 6.0
        dm = instantiate(cfg.data)
        dm.setup()
        assert dm.sets["train"].gain_db == 6.0 and len(dm.sets["train"].variants) == 5
        assert len(dm.sets["test"].variants) == 1 and dm.sets["test"].gain_db == 0
        parts[name] = {p: s.clips for p, s in dm.sets.items()}
    spk = {p: {c.speaker for c in clips} for p, clips in parts["speech_digits"].items()}
    assert spk == {"train": {"george", "jackson"}, "val": {"lucas"}, "test": {"nicolas"}}
    every = parts["speech_digits_all_speakers"]
    assert {c.speaker for c in every["train"]} == {"george", "jackson", "lucas", "nicolas"}
    assert len(every["test"]) == 200 and all(int(Path(c.path).stem.split("_")[2]) <= 4 for c in every["test"])
    assert len(every["train"]) + len(every["val"]) == 1800
