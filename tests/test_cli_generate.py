"""`mamba-seq generate` end to end on tiny, untrained checkpoints (no training): WAV clips, the
waveform plot and classifier scores for an audio run, a FASTA of bases for a DNA run, and
clear errors for bad arguments."""

import json
import re
from pathlib import Path

import lightning
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from data_modules.audio import AudioCodec
from mamba_seq.cli import compose, main
from tasks.audio_classifier import AudioClassifierTask
from tasks.causal_lm import CausalLMTask
from tasks.generate_samples import parse_args

SR = 8000
TINY_MODEL = {"d_model": 16, "n_layer": 2, "d_state": 4}


def save_ckpt(task, path: Path) -> Path:
    """A Lightning-format checkpoint without a Trainer: what load_from_checkpoint reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def make_run(tmp_path: Path, name: str, overrides: list[str], vocab: int) -> Path:
    """<run>/config.yaml as `mamba-seq fit` writes it, and <run>/checkpoints/last.ckpt of a tiny LM."""
    run = tmp_path / name
    cfg = compose(overrides + [f"paths.output_dir={run}"] + [f"model.{k}={v}" for k, v in TINY_MODEL.items()])
    cfg.model.vocab_size = vocab
    OmegaConf.resolve(cfg)
    run.mkdir(parents=True)
    OmegaConf.save(cfg, run / "config.yaml")
    torch.manual_seed(0)
    task = CausalLMTask({**TINY_MODEL, "vocab_size": vocab})
    return save_ckpt(task, run / "checkpoints" / "last.ckpt")


@pytest.fixture
def audio_ckpt(tmp_path):
    return make_run(tmp_path, "audio_run", ["experiment=speech_digits", f"data.sample_rate={SR}"], 256)


def classifier_ckpt(tmp_path: Path) -> Path:
    """An untrained digit classifier's checkpoint (seeded): scores.json needs one, not a good one."""
    torch.manual_seed(0)
    clf = AudioClassifierTask(num_classes=10, sample_rate=SR, class_names=[str(i) for i in range(10)], n_mels=16,
                              channels=(4,))
    return save_ckpt(clf, tmp_path / "clf" / "last.ckpt")


def test_audio_clips_plot_and_scores(tmp_path, audio_ckpt, capsys):
    clf_ckpt = classifier_ckpt(tmp_path)
    out = tmp_path / "samples"
    assert main(["generate", f"ckpt_path={audio_ckpt}", "n=3", "seconds=0.01", f"out_dir={out}", "batch_size=2",
                 "temperature=0.9", "top_k=50", "top_p=0.95", "seed=1", f"classifier={clf_ckpt}"]) == 0
    wavs = sorted(out.glob("sample_*.wav"))
    assert [p.name for p in wavs] == ["sample_000.wav", "sample_001.wav", "sample_002.wav"]
    for p in wavs:
        info = sf.info(p)
        assert info.samplerate == SR and info.frames == 80 and info.channels == 1 and info.subtype == "PCM_16"
    assert (out / "waveforms.png").stat().st_size > 1000
    scores = json.loads((out / "scores.json").read_text())
    assert scores["n"] == 3 and sum(scores["class_histogram"].values()) == 3
    assert 1.0 <= scores["inception_score"] <= 10.0
    summary = json.loads((out / "generate.json").read_text())
    assert summary["kind"] == "audio" and summary["sample_rate"] == SR and summary["samples_per_clip"] == 80
    assert "inception score" in capsys.readouterr().out

    # clips start from silence (the codec's id of 0.0); the same seed gives the same clips
    first = sf.read(wavs[0], dtype="float32")[0]
    assert abs(first[0]) < 1e-3 and np.abs(first).max() > 0
    again = tmp_path / "again"
    assert main(["generate", f"ckpt_path={audio_ckpt}", "n=3", "seconds=0.01", f"out_dir={again}", "batch_size=2",
                 "temperature=0.9", "top_k=50", "top_p=0.95", "seed=1"]) == 0
    for p in wavs:
        assert np.array_equal(sf.read(p)[0], sf.read(again / p.name)[0])
    assert not (again / "scores.json").exists()


def test_audio_prompt_is_the_clips_beginning(tmp_path, audio_ckpt):
    t = np.arange(SR) / SR
    prompt = tmp_path / "prompt.wav"
    sf.write(prompt, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, subtype="PCM_16")
    out = tmp_path / "prompted"
    assert main(["generate", f"ckpt_path={audio_ckpt}", "n=2", "seconds=0.02", f"out_dir={out}",
                 f"prompt={prompt}", "prompt_seconds=0.005"]) == 0
    codec = AudioCodec("mu_law", 8)
    expected = codec.decode(codec.encode(torch.from_numpy(sf.read(prompt, dtype="float32")[0][:40])))
    for p in sorted(out.glob("sample_*.wav")):
        wave, rate = sf.read(p, dtype="float32")
        assert rate == SR and len(wave) == 160
        np.testing.assert_allclose(wave[:40], expected.numpy(), atol=1e-4)


def test_several_prompts_each_begin_their_clips_and_continuations_are_scored(tmp_path, audio_ckpt):
    # FSDD-named recordings: the digit in the name is the label the continuation is judged against
    folder = tmp_path / "prompts"
    folder.mkdir()
    t = np.arange(400) / SR
    for name, freq in (("3_ann_0", 300), ("5_bob_1", 500), ("7_ann_2", 700)):
        sf.write(folder / f"{name}.wav", (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    clf_ckpt = classifier_ckpt(tmp_path)
    out = tmp_path / "continued"
    assert main(["generate", f"ckpt_path={audio_ckpt}", "n=4", "seconds=0.04", f"out_dir={out}", "batch_size=3",
                 f"prompt={folder}", "prompt_seconds=0.01", f"classifier={clf_ckpt}"]) == 0
    summary = json.loads((out / "generate.json").read_text())
    names = [Path(f).name for f in summary["prompt_files"]]
    assert names == ["3_ann_0.wav", "5_bob_1.wav", "7_ann_2.wav", "3_ann_0.wav"]  # clip i: prompt i mod 3
    codec = AudioCodec("mu_law", 8)
    for i, name in enumerate(names):
        wave = sf.read(out / f"sample_{i:03d}.wav", dtype="float32")[0]
        expected = codec.decode(codec.encode(torch.from_numpy(sf.read(folder / name, dtype="float32")[0][:80])))
        np.testing.assert_allclose(wave[:80], expected.numpy(), atol=1e-4)
    cont = json.loads((out / "scores.json").read_text())["continuation"]
    assert cont["generated"]["n"] == 4 and cont["chance"] == pytest.approx(0.1)
    assert cont["real_rest"]["n"] == 4  # 400-sample recordings, 80 of prompt: a real rest for each
    # a glob and a comma list name the same files; a prompt shorter than prompt_seconds is an error
    again = tmp_path / "glob"
    assert main(["generate", f"ckpt_path={audio_ckpt}", "n=2", "seconds=0.04", f"out_dir={again}",
                 f"prompt={folder}/3_*.wav,{folder}/7_ann_2.wav", "prompt_seconds=0.01"]) == 0
    assert [Path(f).name for f in json.loads((again / "generate.json").read_text())["prompt_files"]] == \
        ["3_ann_0.wav", "7_ann_2.wav"]
    with pytest.raises(SystemExit, match=r"3_ann_0.wav holds 0.050 s, less than prompt_seconds=0.06"):
        main(["generate", f"ckpt_path={audio_ckpt}", "n=2", "seconds=0.1", f"out_dir={again}",
              f"prompt={folder}", "prompt_seconds=0.06"])
    with pytest.raises(SystemExit, match="holds no"):
        main(["generate", f"ckpt_path={audio_ckpt}", f"out_dir={again}", f"prompt={folder}/9_*.wav"])


def test_dna_run_writes_fasta_of_bases(tmp_path):
    ckpt = make_run(tmp_path, "dna_run", [], 10)  # the default experiment: dna_pretrain
    out = tmp_path / "dna"
    assert main(["generate", f"ckpt_path={ckpt}", "n=3", "length=130", f"out_dir={out}", "seconds=5"]) == 0
    text = (out / "generated.fa").read_text().splitlines()
    names = [ln for ln in text if ln.startswith(">")]
    assert names == [">sample_000", ">sample_001", ">sample_002"]
    seqs = []
    for ln in text:
        if ln.startswith(">"):
            seqs.append("")
        else:
            assert len(ln) <= 60
            seqs[-1] += ln
    assert [len(s) for s in seqs] == [130, 130, 130]
    assert all(re.fullmatch(r"[ACGTN]+", s) for s in seqs)
    # a prompt of bases begins every sequence
    out2 = tmp_path / "dna_prompt"
    assert main(["generate", f"ckpt_path={ckpt}", "n=2", "length=70", f"out_dir={out2}", "prompt=GATTACA",
                 f"config={ckpt.parent.parent / 'config.yaml'}"]) == 0
    lines = (out2 / "generated.fa").read_text().splitlines()
    assert lines[1].startswith("GATTACA") and len(lines[1]) == 60 and len(lines[2]) == 10


def test_bad_arguments_name_the_key_and_the_allowed_set(tmp_path, audio_ckpt):
    with pytest.raises(SystemExit, match=r"unknown key 'temprature'.*allowed keys: .*temperature"):
        parse_args([f"ckpt_path={audio_ckpt}", "temprature=0.5"])
    with pytest.raises(SystemExit, match=r"bad value n='zero'"):
        parse_args([f"ckpt_path={audio_ckpt}", "n=zero"])
    with pytest.raises(SystemExit, match=r"top_p='1.5': must lie in \(0, 1\]"):
        parse_args([f"ckpt_path={audio_ckpt}", "top_p=1.5"])
    with pytest.raises(SystemExit, match=r"device='tpu': must be one of auto, cpu, cuda"):
        parse_args([f"ckpt_path={audio_ckpt}", "device=tpu"])
    with pytest.raises(SystemExit, match="key=value"):
        parse_args([f"ckpt_path={audio_ckpt}", "n"])
    with pytest.raises(SystemExit, match="ckpt_path=PATH"):
        parse_args(["n=2"])
    args = parse_args([f"ckpt_path={audio_ckpt}", "seed=null", "top_k=5"])
    assert args["seed"] is None and args["top_k"] == 5 and args["n"] == 16
    with pytest.raises(SystemExit, match="config not found"):
        main(["generate", f"ckpt_path={tmp_path / 'elsewhere' / 'x.ckpt'}"])
    with pytest.raises(SystemExit, match="causal-LM"):  # a classifier run cannot generate
        run = tmp_path / "clf_run"
        run.mkdir()
        OmegaConf.save(compose(["experiment=digit_classifier"]), run / "config.yaml")
        main(["generate", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    long_prompt = tmp_path / "long.wav"
    sf.write(long_prompt, np.zeros(SR, dtype=np.float32), SR)
    with pytest.raises(SystemExit, match=r"prompt_seconds=0.5, .* must be shorter than seconds=0.01"):
        main(["generate", f"ckpt_path={audio_ckpt}", "n=1", "seconds=0.01", f"out_dir={tmp_path / 'x'}",
              f"prompt={long_prompt}", "prompt_seconds=0.5"])


def test_help_lists_generate(capsys):
    assert main(["--help"]) == 0
    assert "generate" in capsys.readouterr().out
    assert main(["generate", "--help"]) == 0
    text = capsys.readouterr().out
    for key in ("ckpt_path", "seconds", "temperature", "top_p", "prompt_seconds", "classifier", "batch_size"):
        assert key in text
