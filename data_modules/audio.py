"""AudioDataModule: raw waveforms as quantised samples for next-sample prediction (the Mamba
paper's SC09 setup: 16 kHz, 8-bit mu-law, 256 tokens, predict sample t+1 from samples <= t).

Inputs: a folder (every *.wav / *.flac below it, sorted by relative path) or a CSV/TSV manifest
with a path column (relative to the manifest's folder) and optional label / speaker / split
columns. In a folder, label and speaker come from the file names:
- Free Spoken Digit Dataset `{digit}_{speaker}_{index}.wav` (index 0-4 is FSDD's official test set);
- Speech Commands `<class>/<speakerhash>_nohash_<n>.wav`;
- anything else: label = the sub-folder name if the file is in one, speaker unknown.

Every clip is read once at setup (decoded, down-mixed to mono, resampled to `sample_rate`,
normalised) and kept in memory, so a bad file fails before training starts and later epochs
read no disk. Each item is then cropped or right-padded to `num_samples` and quantised by the
codec. A batch (B clips, N = num_samples):
    input_ids   (B, N-1) long   tokens t[0..N-2]; padding is the codec's id of 0.0
    labels      (B, N-1) long   tokens t[1..N-1]; -100 where the target sample is padding
    mask        (B, N-1) bool   True where the input sample is real (position < length)
    length      (B,)     long   real samples in the crop (<= N)
    waveform    (B, N)   float  the normalised clip, zero-padded (before quantisation)
    class_label (B,)     long   index into class_names, -1 where the clip has no label
    speaker     list[str]       "" where unknown
    path        list[str]
Note the last real input position has mask True but label -100 (its target is padding, or
beyond the crop).

Splits (always disjoint; counts logged):
- `speaker`: no speaker is in two splits. val_speakers / test_speakers name them; otherwise whole
  speakers are drawn (seeded) until val_fraction / test_fraction of the clips is approximated,
  with at least one speaker in each of train, val and test.
- `random`: stratified by label, seeded. Speakers are shared between splits (easier than `speaker`).
- `official`: FSDD's own split: file index 0-4 is test, 5-49 is train (a manifest gives it in an
  `official_split` or `split` column). Validation is carved out of official train: the
  val_speakers' clips if given, else a stratified val_fraction. The official test set holds the
  same speakers as train, so it measures a within-speaker NLL, not generalisation to new voices.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import DataLoader, Dataset

from .sharding import seeded_loader_sampler

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z][A-Za-z0-9-]*)_(\d+)$")  # one digit 0-9
SPEECH_COMMANDS_NAME = re.compile(r"^([0-9a-fA-F]+)_nohash_(\d+)$")
FSDD_OFFICIAL_TEST_MAX_INDEX = 4  # FSDD: recordings 0-4 of each digit and speaker are the test set
# manifest columns looked up when label / speaker / the path are "auto"
PATH_COLUMNS = ("path", "filename", "file", "audio", "wav")
LABEL_COLUMNS = ("label", "class", "digit", "keyword")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id")
OFFICIAL_SPLIT_COLUMNS = ("official_split", "split")


# -- codec ------------------------------------------------------------------------------------------
class AudioCodec:
    """Waveform <-> token ids. kind="mu_law": mu-law companding with mu = 2**bits - 1, exactly
    torchaudio.functional.mu_law_encoding / mu_law_decoding (y = sign(x) ln(1 + mu|x|) / ln(1 + mu),
    id = floor((y + 1) / 2 * mu + 0.5)); kind="linear": uniform levels over [-1, 1].
    Input is clamped to [-1, 1] first."""

    def __init__(self, kind: str = "mu_law", bits: int = 8):
        if kind not in ("mu_law", "linear"):
            raise ValueError(f"codec kind must be 'mu_law' or 'linear', got {kind!r}")
        if not 1 <= int(bits) <= 16:
            raise ValueError(f"codec bits must be in 1..16, got {bits!r}")
        self.kind, self.bits = kind, int(bits)
        self.vocab_size = 2**self.bits
        self.pad_id = int(self.encode(torch.zeros(1))[0])  # the id of silence, used for padding

    def __repr__(self) -> str:
        return f"AudioCodec(kind={self.kind!r}, bits={self.bits})"

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """wave: float (...) in [-1, 1] (clamped) -> ids: long (...) in [0, vocab_size)."""
        x = torch.as_tensor(wave).float().clamp(-1.0, 1.0)
        q = self.vocab_size - 1
        if self.kind == "mu_law":
            return AF.mu_law_encoding(x, self.vocab_size).clamp(0, q)
        return torch.floor((x + 1.0) / 2.0 * q + 0.5).long().clamp(0, q)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: long (...) -> wave: float32 (...) in [-1, 1]."""
        ids = torch.as_tensor(ids)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"{self}: ids must lie in [0, {self.vocab_size}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")
        q = self.vocab_size - 1
        if self.kind == "mu_law":
            return AF.mu_law_decoding(ids, self.vocab_size).float()
        return (ids.float() / q) * 2.0 - 1.0


# -- reading ----------------------------------------------------------------------------------------
_MAX_RESAMPLE_KERNEL = 1 << 24  # elements (64 MB of float32); 44100 -> 16000 Hz needs 0.08 M
_BAD_HINT = "re-export it as PCM WAV/FLAC or remove it (or set data.on_bad_file=skip to leave it out)"


def read_audio(path: str | Path, sample_rate: int, on_bad: str = "error",
               notes: Counter | None = None) -> torch.Tensor | None:
    """Read one audio file -> float32 tensor (samples,) at `sample_rate`, mono.

    soundfile decodes it (always_2d, float32); several channels are down-mixed to their mean; a
    file at another rate is RESAMPLED to `sample_rate` with torchaudio.functional.resample
    (windowed-sinc). A missing, empty, unreadable or corrupt file, one holding no samples, or one
    with NaN/inf samples is a ValueError naming the file and the fault; with on_bad="skip" it is
    logged and None is returned instead. `notes` (optional) counts what was done to the file
    ("resampled from 8000 Hz", "down-mixed 2 channels"), so a caller can log each once.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    try:
        return _read_audio(Path(path), int(sample_rate), notes)
    except ValueError as err:
        if on_bad == "error":
            raise
        log.warning("skipped: %s", err)
        return None


def _read_audio(path: Path, sample_rate: int, notes: Counter | None) -> torch.Tensor:
    if not path.is_file():
        raise ValueError(f"{path}: audio file not found; fix the path or remove it from the list")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes); {_BAD_HINT}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile.LibsndfileError, or a RuntimeError/TypeError from a bad header
        raise ValueError(f"{path}: cannot decode audio ({type(err).__name__}: {err}); the file is corrupt or "
                         f"not a format libsndfile reads; {_BAD_HINT}") from None
    frames, channels = data.shape
    if frames == 0 or channels == 0:
        raise ValueError(f"{path}: the file holds no audio samples (0 frames); {_BAD_HINT}")
    bad = ~np.isfinite(data)
    if bad.any():
        frame, channel = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{path}: sample {frame} (channel {channel}) is {data[frame, channel]}; {int(bad.sum())} "
                         f"samples are NaN or infinite; {_BAD_HINT}")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if channels > 1 else data[:, 0]))
    if channels > 1 and notes is not None:
        notes[f"down-mixed {channels} channels to mono (their mean)"] += 1
    if rate <= 0:
        raise ValueError(f"{path}: the header gives sample rate {rate}; {_BAD_HINT}")
    if rate != sample_rate:
        # torchaudio's sinc kernel is (new/g, orig/g + 2*width) floats (g = gcd of the rates): a
        # corrupt header rate (e.g. 5697682 Hz) would ask for tens of GB, a rate coprime with ours
        # (e.g. 24987 Hz) for ~1 GB and seconds per clip
        g = math.gcd(int(rate), sample_rate)
        orig, new = int(rate) // g, sample_rate // g
        kernel = new * (orig + 2 * math.ceil(6 * orig / (min(orig, new) * 0.99)))
        if kernel > _MAX_RESAMPLE_KERNEL:
            raise ValueError(f"{path}: the header gives sample rate {rate} Hz, which resamples to {sample_rate} Hz "
                             f"only through a {kernel:,}-element kernel (corrupt header, or an unusual rate); "
                             f"resample it offline (e.g. `sox in.wav -r {sample_rate} out.wav`) or {_BAD_HINT}")
        wave = AF.resample(wave, int(rate), sample_rate)
        if notes is not None:
            notes[f"resampled from {rate} Hz to {sample_rate} Hz"] += 1
    return wave.float().contiguous()


# -- normalisation ----------------------------------------------------------------------------------
# The NLL per sample depends on the level: a quiet clip uses few mu-law levels and is easier to
# predict. The Mamba paper (like SaShiMi before it) reports SC09 NLL on the clips as stored;
# WaveNet-style pipelines peak-normalise each clip. Default "none", so our NLL is comparable with
# the paper; "peak" and "rms" are there for generation quality, but change the NLL (report which).
NORMALIZE = ("none", "peak", "rms")
SILENCE = 1e-8  # a clip whose peak/rms is below this is left as it is (no divide by ~0)


def normalize_wave(wave: torch.Tensor, how: str, target_rms: float = 0.1) -> torch.Tensor:
    """wave: (samples,) -> (samples,). "none": as is; "peak": divided by its max |x| (max abs 1);
    "rms": scaled to rms `target_rms`, then clipped to [-1, 1]. Silent clips are left unchanged."""
    if how == "none":
        return wave
    if how == "peak":
        peak = float(wave.abs().max()) if wave.numel() else 0.0
        return wave / peak if peak > SILENCE else wave
    if how == "rms":
        rms = float(wave.pow(2).mean().sqrt()) if wave.numel() else 0.0
        return (wave * (target_rms / rms)).clamp(-1.0, 1.0) if rms > SILENCE else wave
    raise ValueError(f"normalize must be one of {NORMALIZE}, got {how!r}")


def change_speed(wave: torch.Tensor, speed: float) -> torch.Tensor:
    """wave: (samples,) -> about samples / speed samples: the clip played `speed` times as fast,
    pitch and tempo together (Ko et al. 2015, "Audio augmentation for speech recognition"). The
    clip is taken as if recorded at speed x the rate and resampled back with torchaudio's
    band-limited sinc resampler (speed is rounded to a fraction p/q, q <= 50, to keep its kernel
    small); speeding up also low-passes, so nothing folds back above the Nyquist rate."""
    if speed == 1.0:
        return wave
    ratio = Fraction(speed).limit_denominator(50)
    return AF.resample(wave, ratio.numerator, ratio.denominator)


# -- records ----------------------------------------------------------------------------------------
@dataclass
class Clip:
    path: str
    label: str | None = None
    speaker: str | None = None
    official_split: str | None = None  # "train" | "test" | None
    place: str = ""  # where it was listed (manifest line), for error messages


def clip_from_name(path: Path, root: Path) -> Clip:
    """Label, speaker and official split from the file name (FSDD, Speech Commands), else the
    sub-folder name as the label and no speaker."""
    stem, rel = path.stem, path.relative_to(root)
    folder = rel.parent.name if rel.parent != Path(".") else None
    m = SPEECH_COMMANDS_NAME.match(stem)  # first: `8395_nohash_0` would also fit FSDD's digit_speaker_index
    if m:
        return Clip(str(path), folder, m.group(1))
    m = FSDD_NAME.match(stem)
    if m:
        index = int(m.group(3))
        split = "test" if index <= FSDD_OFFICIAL_TEST_MAX_INDEX else "train"
        return Clip(str(path), m.group(1), m.group(2), split)
    return Clip(str(path), folder, None)


def list_folder(root: Path) -> list[Clip]:
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ValueError(f"{root}: no {'/'.join(AUDIO_SUFFIXES)} files in this folder or below it")
    return [clip_from_name(p, root) for p in files]


def _pick_column(header: list[str], wanted: str | None, candidates: tuple, what: str, path: Path) -> str | None:
    if wanted is None:
        return None
    if wanted != "auto":
        if wanted not in header:
            raise ValueError(f"{path}: no {what} column {wanted!r}; the header has {header}")
        return wanted
    return next((c for c in candidates if c in header), None)


def read_manifest(path: Path, label: str | None, speaker: str | None) -> list[Clip]:
    """CSV (or TSV for .tsv/.tab/.txt) with a path column (relative to the manifest's folder) and
    optional label, speaker and official split columns. label / speaker: a column name, "auto"
    (the first of LABEL_COLUMNS / SPEAKER_COLUMNS present) or None (not used)."""
    if not path.is_file():
        raise ValueError(f"audio manifest not found: {path}")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","
    clips: list[Clip] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = list(reader.fieldnames or [])
        path_col = _pick_column(header, "auto", PATH_COLUMNS, "path", path)
        if path_col is None:
            raise ValueError(f"{path}: no path column (one of {PATH_COLUMNS}); the header has {header}")
        label_col = _pick_column(header, label, LABEL_COLUMNS, "label", path)
        speaker_col = _pick_column(header, speaker, SPEAKER_COLUMNS, "speaker", path)
        split_col = _pick_column(header, "auto", OFFICIAL_SPLIT_COLUMNS, "split", path)
        for row in reader:
            line = reader.line_num
            rel = (row.get(path_col) or "").strip()
            if not rel:
                raise ValueError(f"{path}, line {line}: empty {path_col!r}; fill it or remove the row")
            split = None
            if split_col is not None and (row.get(split_col) or "").strip():
                split = SPLIT_NAMES.get(row[split_col].strip().lower())
                if split is None:
                    raise ValueError(f"{path}, line {line}: {split_col} {row[split_col]!r} is not one of "
                                     "train/val/test")
            lab = (row.get(label_col) or "").strip() if label_col else ""
            spk = (row.get(speaker_col) or "").strip() if speaker_col else ""
            clips.append(Clip(str((path.parent / rel)), lab or None, spk or None, split, f"{path}, line {line}"))
    if not clips:
        raise ValueError(f"{path}: the manifest has no rows")
    return clips


# -- splits -----------------------------------------------------------------------------------------
def _take_speakers(order: list[str], counts: Counter, target: float) -> list[str]:
    """Speakers from `order` (in order) while adding the next brings the clip count closer to
    target; at least one."""
    taken, filled = [], 0
    for s in order:
        if taken and abs(filled + counts[s] - target) >= abs(filled - target):
            continue
        taken.append(s)
        filled += counts[s]
    return taken


def speaker_split(speakers: list[str], val_speakers, test_speakers, val_fraction: float, test_fraction: float,
                  seed: int, source: str) -> np.ndarray:
    """-> split name per clip; no speaker in two splits, each split at least one speaker."""
    counts = Counter(speakers)
    names = sorted(counts)
    for given, what in ((val_speakers, "val_speakers"), (test_speakers, "test_speakers")):
        unknown = [s for s in (given or []) if s not in counts]
        if unknown:
            raise ValueError(f"{source}: {what} {unknown} are not speakers of this data; speakers: "
                             f"{names[:30]}{' ...' if len(names) > 30 else ''}")
    both = set(val_speakers or []) & set(test_speakers or [])
    if both:
        raise ValueError(f"{source}: speakers {sorted(both)} are in both val_speakers and test_speakers")
    if len(names) < 3:
        raise ValueError(f"{source}: split=speaker needs at least 3 speakers (one each for train, val and test); "
                         f"found {len(names)}: {names}. Use split=random")
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    total = len(speakers)
    test = list(test_speakers) if test_speakers else None
    val = list(val_speakers) if val_speakers else None
    if test is None:
        free = [s for s in order if s not in (val or [])]
        reserve = 1 if val is not None else 2  # keep a speaker for train (and one for val)
        test = _take_speakers(free[: max(0, len(free) - reserve)], counts, test_fraction * total)
    if val is None:
        free = [s for s in order if s not in test]
        val = _take_speakers(free[:-1], counts, val_fraction * total)  # keep one for train
    train = [s for s in names if s not in set(val) | set(test)]
    for part, group in (("train", train), ("val", val), ("test", test)):
        if not group:
            raise ValueError(f"{source}: no speaker is left for {part} (val {sorted(val)}, test {sorted(test)}); "
                             "every split needs at least one speaker")
    where = {**{s: "train" for s in train}, **{s: "val" for s in val}, **{s: "test" for s in test}}
    return np.array([where[s] for s in speakers], dtype=object)


def stratified_split(labels: list, fractions: dict[str, float], seed: int, ensure: tuple = ()) -> np.ndarray:
    """-> split name per clip: per label, a seeded shuffle cut by `fractions` (the rest is train).
    Splits in `ensure` get at least one clip (taken from train) if there are clips to spare."""
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), "train", dtype=object)
    keys = np.array(["" if x is None else str(x) for x in labels], dtype=object)
    for lab in sorted(set(keys)):
        idx = np.flatnonzero(keys == lab)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for part, frac in fractions.items():
            n = int(round(frac * len(idx)))
            out[idx[start : start + n]] = part
            start += n
    for part in ensure:
        if not (out == part).any():
            train = np.flatnonzero(out == "train")
            if len(train) > 1:
                out[train[rng.integers(len(train))]] = part
    return out


# -- dataset ----------------------------------------------------------------------------------------
class ClipDataset(Dataset):
    """Decoded clips held in memory; each item cropped or padded to num_samples and quantised."""

    def __init__(self, waves: list[torch.Tensor], clips: list[Clip], class_ids: list[int], num_samples: int,
                 crop: str, codec: AudioCodec, pad_with: str = "mask", speeds: tuple[float, ...] = (1.0,),
                 gain_db: float = 0.0):
        self.waves, self.clips, self.class_ids = waves, clips, class_ids
        self.num_samples, self.crop, self.codec, self.pad_with = num_samples, crop, codec, pad_with
        # augmentation (train only): each item is one of the speed variants, at a random gain
        self.speeds, self.gain_db = tuple(speeds), float(gain_db)
        self._variants: list[list[torch.Tensor]] | None = None

    @property
    def variants(self) -> list[list[torch.Tensor]]:
        # the clips at each speed, resampled once on first use (per item would cost more than the
        # rest of loading; at setup, `test` and `predict` would pay for a split they never read)
        if self._variants is None:
            self._variants = [self.waves if s == 1.0 else [change_speed(w, s) for w in self.waves]
                              for s in self.speeds]
        return self._variants

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> dict:
        # random draws come from torch's global RNG, like crop="random": seeded per run (seed=) and
        # restored on resume (tasks/checkpointing.py)
        n = self.num_samples
        k = int(torch.randint(len(self.speeds), ()).item()) if len(self.speeds) > 1 else 0
        wave = self.variants[k][i]
        if self.gain_db > 0:
            gain_db = (float(torch.rand(())) * 2 - 1) * self.gain_db
            wave = (wave * 10 ** (gain_db / 20)).clamp(-1.0, 1.0)
        if len(wave) > n:
            if self.crop == "random":
                start = int(torch.randint(0, len(wave) - n + 1, ()).item())
            elif self.crop == "center":
                start = (len(wave) - n) // 2
            else:
                start = 0
            wave = wave[start : start + n]
        length = len(wave)
        padded = torch.zeros(n, dtype=torch.float32)
        padded[:length] = wave
        tokens = torch.full((n,), self.codec.pad_id, dtype=torch.long)
        tokens[:length] = self.codec.encode(wave)
        if self.pad_with == "silence":  # the padding is digital silence the model must learn to emit
            length = n
        return {"tokens": tokens, "waveform": padded, "length": length, "class_label": self.class_ids[i],
                "speaker": self.clips[i].speaker or "", "path": self.clips[i].path}


def collate_next_sample(items: list[dict]) -> dict:
    """Items of N tokens -> a next-sample batch (see the module docstring)."""
    tokens = torch.stack([it["tokens"] for it in items])  # (B, N)
    length = torch.tensor([it["length"] for it in items], dtype=torch.long)  # (B,)
    pos = torch.arange(tokens.shape[1] - 1)  # input positions 0..N-2
    mask = pos[None, :] < length[:, None]  # (B, N-1) the input sample is real
    labels = tokens[:, 1:].clone()
    labels[(pos[None, :] + 1) >= length[:, None]] = IGNORE_INDEX  # the target sample is padding
    return {
        "input_ids": tokens[:, :-1].contiguous(),
        "labels": labels,
        "mask": mask,
        "length": length,
        "waveform": torch.stack([it["waveform"] for it in items]),
        "class_label": torch.tensor([it["class_label"] for it in items], dtype=torch.long),
        "speaker": [it["speaker"] for it in items],
        "path": [it["path"] for it in items],
    }


def _sorted_names(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


# -- data module ------------------------------------------------------------------------------------
class AudioDataModule(pl.LightningDataModule):
    """Quantised waveforms for next-sample prediction; see the module docstring for inputs,
    splits and the batch. Clips longer than num_samples are cropped (train: `crop`; val/test:
    from the start, or the centre when crop="center"), shorter ones right-padded.
    normalize: "none" (default: clips as stored, the paper's setting) | "peak" | "rms" (to
    target_rms); see normalize_wave. max_files: a seeded random subset of the files, for quick runs.
    on_bad_file="skip": unreadable files are left out, logged, and listed in `.skipped`
    as (path, reason). pad_with="mask" (default): padding is no input and no target (labels -100,
    mask False); "silence": the padding is part of the clip, digital silence after the utterance,
    as in SC09's fixed 1-s clips, so a generator learns to end its utterances (the NLL then
    includes those easy samples: test with pad_with=mask for the NLL of the recordings alone).
    Training augmentation (train split only; val/test are the clips as read): speeds, e.g.
    [0.9, 1.0, 1.1], plays each item at one of these speeds, drawn uniformly (change_speed: pitch
    and tempo together, new voices from few speakers); gain_db > 0 scales it by a gain drawn
    uniformly in [-gain_db, +gain_db] dB, clipped to [-1, 1]. Both act after normalize, before the
    crop and quantisation, so a longer (slowed) clip may be cropped."""

    def __init__(
        self,
        root: str | None = None,
        manifest: str | None = None,
        sample_rate: int = 16000,
        num_samples: int = 16000,
        codec: str = "mu_law",
        bits: int = 8,
        normalize: str = "none",
        label: str | None = "auto",
        speaker: str | None = "auto",
        split: str = "speaker",
        val_speakers: list | None = None,
        test_speakers: list | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        on_bad_file: str = "error",
        crop: str = "start",
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        max_files: int | None = None,
        target_rms: float = 0.1,
        pad_with: str = "mask",
        speeds: list | None = None,
        gain_db: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if (root is None) == (manifest is None):
            raise ValueError("give exactly one of data.root (a folder of audio files) and data.manifest (a CSV/TSV)")
        if split not in ("speaker", "random", "official"):
            raise ValueError(f"data.split must be speaker, random or official, got {split!r}")
        if on_bad_file not in ("error", "skip"):
            raise ValueError(f"data.on_bad_file must be error or skip, got {on_bad_file!r}")
        if crop not in ("start", "random", "center"):
            raise ValueError(f"data.crop must be start, random or center, got {crop!r}")
        if pad_with not in ("mask", "silence"):
            raise ValueError(f"data.pad_with must be mask or silence, got {pad_with!r}")
        if normalize not in NORMALIZE:
            raise ValueError(f"data.normalize must be one of {NORMALIZE}, got {normalize!r}")
        speeds = [1.0] if speeds is None else list(speeds)
        if not speeds or not all(isinstance(v, (int, float)) and 0.5 <= v <= 2.0 for v in speeds):
            raise ValueError(f"data.speeds must be a non-empty list of speed factors in [0.5, 2], e.g. "
                             f"[0.9, 1.0, 1.1], got {speeds!r}")
        if not 0 <= float(gain_db) <= 40:
            raise ValueError(f"data.gain_db must be in [0, 40] (the largest random gain, in dB), got {gain_db!r}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"data.val_fraction ({val_fraction}) and data.test_fraction ({test_fraction}) must be "
                             "in [0, 1) and sum to less than 1")
        if int(num_samples) < 2:
            raise ValueError(f"data.num_samples must be at least 2 (one input and one target), got {num_samples}")
        if root is not None and label not in ("auto", None):
            raise ValueError(f"data.label={label!r} names a manifest column; with data.root use 'auto' or null")
        if root is not None and speaker not in ("auto", None):
            raise ValueError(f"data.speaker={speaker!r} names a manifest column; with data.root use 'auto' or null")
        self.root = Path(root).expanduser() if root is not None else None
        self.manifest = Path(manifest).expanduser() if manifest is not None else None
        self._sample_rate, self.num_samples = int(sample_rate), int(num_samples)
        self._codec = AudioCodec(codec, bits)
        self.normalize, self.target_rms = normalize, float(target_rms)
        self.label, self.speaker = label, speaker
        self.split = split
        self.val_speakers = [str(s) for s in val_speakers] if val_speakers else None
        self.test_speakers = [str(s) for s in test_speakers] if test_speakers else None
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.on_bad_file, self.crop, self.pad_with = on_bad_file, crop, pad_with
        self.speeds, self.gain_db = tuple(float(v) for v in speeds), float(gain_db)
        self.batch_size, self.num_workers, self.seed, self.max_files = batch_size, num_workers, seed, max_files
        self.skipped: list[tuple[str, str]] = []
        self._class_names: list[str] | None = None
        self.sets: dict[str, ClipDataset] = {}

    # -- properties
    @property
    def codec(self) -> AudioCodec:
        return self._codec

    @property
    def vocab_size(self) -> int:
        return self._codec.vocab_size

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def class_names(self) -> list[str]:
        self.setup()
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- setup
    def _source(self) -> str:
        return str(self.root if self.root is not None else self.manifest)

    def _list_clips(self) -> list[Clip]:
        if self.root is not None:
            if not self.root.is_dir():
                raise ValueError(f"audio folder not found: {self.root} (data.root)")
            clips = list_folder(self.root)
            if self.label is None:
                for c in clips:
                    c.label = None
            if self.speaker is None:
                for c in clips:
                    c.speaker = None
        else:
            clips = read_manifest(self.manifest, self.label, self.speaker)
        if self.max_files is not None and self.max_files < len(clips):
            keep = np.sort(np.random.default_rng(self.seed).choice(len(clips), int(self.max_files), replace=False))
            log.info("%s: max_files=%d of %d files (seeded random subset)", self._source(), len(keep), len(clips))
            clips = [clips[i] for i in keep]
        return clips

    def _load(self, clips: list[Clip]) -> tuple[list[Clip], list[torch.Tensor]]:
        notes: Counter = Counter()
        kept, waves = [], []
        for c in clips:
            try:
                wave = _read_audio(Path(c.path), self._sample_rate, notes)
            except ValueError as err:
                reason = str(err) + (f" (listed at {c.place})" if c.place else "")
                if self.on_bad_file == "error":
                    raise ValueError(reason) from None
                log.warning("skipped bad audio file: %s", reason)
                self.skipped.append((c.path, str(err)))
                continue
            kept.append(c)
            waves.append(normalize_wave(wave, self.normalize, self.target_rms))
        for what, n in notes.items():
            log.info("%s: %s for %d files", self._source(), what, n)
        if self.skipped:
            log.warning("%s: skipped %d of %d audio files (on_bad_file=skip); see AudioDataModule.skipped",
                        self._source(), len(self.skipped), len(clips))
        if not kept:
            raise ValueError(f"{self._source()}: no readable audio files ({len(self.skipped)} skipped)")
        return kept, waves

    def _assign(self, clips: list[Clip]) -> np.ndarray:
        source = self._source()
        labels = [c.label for c in clips]
        if self.split == "speaker":
            unknown = [c for c in clips if not c.speaker]
            if unknown and self.speaker is None:
                raise ValueError(f"{source}: split=speaker needs speakers, and data.speaker is null; name a "
                                 "speaker column (or 'auto') or use split=random")
            if unknown:
                raise ValueError(
                    f"{source}: split=speaker needs every clip's speaker, and {len(unknown)} of {len(clips)} have "
                    f"none (e.g. {unknown[0].path}: its name matches neither FSDD's {{digit}}_{{speaker}}_{{index}} "
                    "nor Speech Commands' <class>/<speaker>_nohash_<n>). Give a manifest with a speaker column "
                    "or use split=random")
            return speaker_split([c.speaker for c in clips], self.val_speakers, self.test_speakers,
                                 self.val_fraction, self.test_fraction, self.seed, source)
        if self.split == "random":
            return stratified_split(labels, {"val": self.val_fraction, "test": self.test_fraction}, self.seed,
                                    ensure=("val", "test"))
        # official
        missing = [c for c in clips if c.official_split is None]
        if missing:
            raise ValueError(f"{source}: split=official needs each clip's official split (FSDD names "
                             f"{{digit}}_{{speaker}}_{{index}}, or an official_split/split column in a manifest); "
                             f"{len(missing)} clips have none, e.g. {missing[0].path}")
        out = np.array([c.official_split for c in clips], dtype=object)
        train = np.flatnonzero(out == "train")
        if self.val_speakers:
            spk = {c.speaker for c in clips}
            unknown = [s for s in self.val_speakers if s not in spk]
            if unknown:
                raise ValueError(f"{source}: val_speakers {unknown} are not speakers of this data: "
                                 f"{sorted(spk, key=str)}")
            for i in train:
                if clips[i].speaker in self.val_speakers:
                    out[i] = "val"
        else:
            sub = stratified_split([labels[i] for i in train], {"val": self.val_fraction}, self.seed, ensure=("val",))
            out[train] = sub
        return out

    def setup(self, stage: str | None = None):
        if self.sets:
            return
        self.skipped = []
        clips, waves = self._load(self._list_clips())
        split = self._assign(clips)
        known = {c.label for c in clips if c.label is not None}
        self._class_names = _sorted_names(known)
        index = {name: i for i, name in enumerate(self._class_names)}
        class_ids = [index[c.label] if c.label is not None else -1 for c in clips]
        seen: dict[str, str] = {}
        for part in SPLITS:
            idx = np.flatnonzero(split == part)
            if len(idx) == 0:
                raise ValueError(f"{self._source()}: the {part} split is empty ({len(clips)} clips, "
                                 f"split={self.split}); "
                                 "change the fractions or speaker lists, or give more files")
            for i in idx:  # disjoint by construction; a path listed twice in a manifest would break it
                other = seen.setdefault(clips[i].path, part)
                if other != part:
                    raise ValueError(f"{clips[i].place or clips[i].path}: {clips[i].path} is in both {other} and "
                                     f"{part}; list each file once")
            crop = self.crop if part == "train" else ("center" if self.crop == "center" else "start")
            augment = dict(speeds=self.speeds, gain_db=self.gain_db) if part == "train" else {}
            self.sets[part] = ClipDataset([waves[i] for i in idx], [clips[i] for i in idx],
                                          [class_ids[i] for i in idx], self.num_samples, crop, self._codec,
                                          self.pad_with, **augment)
            lens = np.array([len(waves[i]) for i in idx])
            speakers = sorted({clips[i].speaker for i in idx if clips[i].speaker})
            log.info("%s split: %d clips, %d speakers%s, %.1f s of audio, %d clips longer than num_samples=%d "
                     "(cropped)", part, len(idx), len(speakers),
                     f" {speakers}" if 0 < len(speakers) <= 5 else "", lens.sum() / self._sample_rate,
                     int((lens > self.num_samples).sum()), self.num_samples)

    # -- loaders
    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        self.setup()
        dataset = self.sets[part]
        sampler, generator = seeded_loader_sampler(self.trainer, len(dataset), self.batch_size, self.seed, part,
                                                   shuffle)  # this process's shard (data_modules/sharding.py)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, generator=generator,
                          num_workers=self.num_workers, collate_fn=collate_next_sample)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)
