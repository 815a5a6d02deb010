"""`mamba-seq generate`: sample from a causal-LM checkpoint (task=causal_lm) and write the samples.

    mamba-seq generate ckpt_path=RUN/checkpoints/last.ckpt n=16 seconds=1 out_dir=DIR \
        [temperature=1.0 top_k=0 top_p=1.0 seed=0 prompt=WAV prompt_seconds=0.25 classifier=CKPT batch_size=16]

The run's config (`RUN/config.yaml`, which every `mamba-seq fit` writes two directories above its
checkpoints; `config=PATH` to give another) says what the tokens are:
- an audio run (data: AudioDataModule): the codec (kind, bits) and sample rate come from it. Each
  clip is `seconds` long, starting from the codec's id of 0.0 (silence), or from the first
  `prompt_seconds` of the WAV `prompt` (read, resampled, normalised as the run's data were, and
  quantised); the prompt counts in the clip's length. `prompt` may also name several recordings
  (a folder, a glob, or a comma-separated list of these): clip i continues recording i mod k.
  Written: sample_000.wav ... (16-bit PCM at the sample rate), waveforms.png (waveform and
  spectrogram of each clip) and, with classifier=CKPT (a `mamba-seq fit
  experiment=digit_classifier` checkpoint), scores.json: the inception score and class histogram
  of the clips, and for prompts whose file names carry a label (FSDD's `{digit}_{speaker}_{i}`,
  Speech Commands' class folders) the classifier's accuracy on the generated part alone (the
  prompt cut off) against the prompt's label, with chance and a binomial p-value, beside its
  accuracy on the real rest of the same recordings (tasks/generation_scoring.py).
- a DNA run (data: a FASTA / labelled-sequence / variant module, the DNA tokenizer): `length`
  bases per sequence (seconds is ignored), from a random base (or a `prompt` of bases, literal or
  the first record of a FASTA file). Only base tokens (A C G T N) are sampled: the logits of the
  special tokens and of the vocabulary's padding rows are masked. Written: generated.fa (60
  bases per line).
Always written: generate.json (the arguments, the run, the files, timing).

These are not Hydra overrides: `parse_args` checks every key and value and names the key and
the allowed set when one is wrong.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import time
from datetime import datetime
from pathlib import Path

import torch

log = logging.getLogger("mamba_seq")

AUDIO_TARGETS = ("data_modules.AudioDataModule", "data_modules.audio.AudioDataModule")
DNA_TARGETS = (
    "data_modules.FastaDataModule", "data_modules.fasta_pretraining.FastaDataModule",
    "data_modules.LabelledSequenceDataModule", "data_modules.labelled_sequences.LabelledSequenceDataModule",
    "data_modules.VariantDataModule", "data_modules.variant_effect.VariantDataModule",
)
LM_TARGETS = ("tasks.CausalLMTask", "tasks.causal_lm.CausalLMTask")
MAX_PLOTTED = 32  # waveforms.png shows at most this many clips


# -- arguments ---------------------------------------------------------------------------------------
def _positive_int(v: str) -> int:
    x = int(v)
    if x < 1:
        raise ValueError("must be a positive integer")
    return x


def _non_negative_int(v: str) -> int:
    x = int(v)
    if x < 0:
        raise ValueError("must be an integer >= 0")
    return x


def _positive_float(v: str) -> float:
    x = float(v)
    if not (x > 0 and math.isfinite(x)):
        raise ValueError("must be a positive number")
    return x


def _probability(v: str) -> float:
    x = float(v)
    if not 0 < x <= 1:
        raise ValueError("must lie in (0, 1]")
    return x


def _optional_int(v: str) -> int | None:
    return None if v.lower() in ("null", "none", "") else int(v)


def _optional_str(v: str) -> str | None:
    return None if v.lower() in ("null", "none", "") else v


def _choice(*options):
    def parse(v: str) -> str:
        if v not in options and not (options == ("auto", "cpu", "cuda") and v.startswith("cuda:")):
            raise ValueError(f"must be one of {', '.join(options)}")
        return v
    return parse


# key -> (parser, default, help)
ARGS = {
    "ckpt_path": (str, None, "the causal-LM checkpoint (required)"),
    "config": (_optional_str, None, "the run's config.yaml (default: two directories above ckpt_path)"),
    "n": (_positive_int, 16, "how many clips / sequences"),
    "seconds": (_positive_float, 1.0, "audio: length of each clip, prompt included"),
    "length": (_positive_int, 1000, "DNA: bases per sequence, prompt included"),
    "out_dir": (_optional_str, None, "where to write (default: <run>/generated/<timestamp>)"),
    "temperature": (_positive_float, 1.0, "softmax temperature"),
    "top_k": (_non_negative_int, 0, "sample from the k most likely tokens (0: all)"),
    "top_p": (_probability, 1.0, "nucleus sampling: the smallest set of tokens with this much probability"),
    "seed": (_optional_int, 0, "random seed (null: unseeded); batch i uses seed + i"),
    "prompt": (_optional_str, None, "audio: a WAV to continue (or a folder / glob / comma list of them: clip i "
                                    "continues file i mod k); DNA: bases or a FASTA file"),
    "prompt_seconds": (_positive_float, 0.25, "audio: how much of the prompt WAV to use"),
    "classifier": (_optional_str, None, "audio: an AudioClassifierTask checkpoint; writes scores.json"),
    "batch_size": (_positive_int, 16, "clips / sequences generated at once"),
    "device": (_choice("auto", "cpu", "cuda"), "auto", "auto (the GPU where there is one), cpu, cuda or cuda:N"),
    "cuda_graph": (_choice("auto", "true", "false"), "auto", "capture the decode step in a CUDA graph (GPU only)"),
}


def usage() -> str:
    lines = ["usage: mamba-seq generate ckpt_path=PATH [key=value ...]", "",
             "Sample clips (audio run) or sequences (DNA run) from a causal-LM checkpoint.", "", "keys:"]
    for key, (_, default, what) in ARGS.items():
        lines.append(f"  {key:<15} {what}" + ("" if default is None else f" (default {default})"))
    lines += ["", "example:",
              "  mamba-seq generate ckpt_path=outputs/speech_digits/<run>/checkpoints/last.ckpt n=16 seconds=1 \\",
              "      out_dir=samples classifier=outputs/digit_classifier/<run>/checkpoints/last.ckpt"]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> dict:
    """`key=value` strings -> {key: parsed value} with every default filled in. A SystemExit names
    an unknown key (and the allowed ones), a missing `=`, a bad value, or a missing ckpt_path."""
    out = {k: default for k, (_, default, _) in ARGS.items()}
    allowed = ", ".join(ARGS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("+")
        if not sep:
            raise SystemExit(f"mamba-seq generate: arguments are key=value, got {arg!r}; keys: {allowed}")
        if key not in ARGS:
            raise SystemExit(f"mamba-seq generate: unknown key {key!r}; allowed keys: {allowed}")
        value = value.strip().strip("'\"")
        try:
            out[key] = ARGS[key][0](value)
        except ValueError as err:
            msg = str(err) if "must" in str(err) else f"must be of type {ARGS[key][0].__name__.lstrip('_')}"
            raise SystemExit(f"mamba-seq generate: bad value {key}={value!r}: {msg}") from None
    if not out["ckpt_path"]:
        raise SystemExit("mamba-seq generate: give the causal-LM checkpoint to sample from: ckpt_path=PATH")
    return out


# -- the run -----------------------------------------------------------------------------------------
def run_config(ckpt_path: str | Path, config: str | Path | None = None):
    """The config.yaml of the run that wrote `ckpt_path` (<run>/checkpoints/x.ckpt -> <run>/config.yaml)."""
    from omegaconf import OmegaConf

    path = Path(config) if config else Path(ckpt_path).resolve().parent.parent / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"mamba-seq generate: the run's config not found at {path}; every `mamba-seq fit` writes "
                         "<run>/config.yaml beside <run>/checkpoints/: give config=PATH")
    return OmegaConf.load(path)


def load_lm(ckpt_path: str | Path):
    """A causal-LM checkpoint -> CausalLMTask on the CPU, eval mode (weights_only loading)."""
    from .causal_lm import CausalLMTask

    path = Path(ckpt_path)
    if not path.is_file():
        raise SystemExit(f"mamba-seq generate: checkpoint not found: {path}")
    return CausalLMTask.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


class _MaskedHead(torch.nn.Module):
    """The LM head plus a bias of -inf on the token ids that must never be sampled."""

    def __init__(self, head: torch.nn.Module, allowed: torch.Tensor):
        super().__init__()
        self.head = head
        self.register_buffer("bias", torch.where(allowed, 0.0, float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x)
        return logits + self.bias.to(logits.dtype)


def sample_tokens(model, n: int, total: int, prompt: torch.Tensor, allowed: torch.Tensor, *, batch_size: int = 16,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = 0,
                  device: str = "cpu", cuda_graph: str | bool = "auto", progress: bool = True) -> torch.Tensor:
    """n sequences of `total` tokens from a MambaLMHeadModel, each starting with `prompt`.

    prompt: (P,) or (n, P) long, 1 <= P < total; allowed: (padded_vocab,) bool, the ids that may be
    sampled (others get -inf logits). Batches of batch_size; batch i is seeded with seed + i.
    -> (n, total) long on the CPU."""
    from mamba_seq.generation import generate

    prompt = prompt.long()
    if prompt.dim() == 1:
        prompt = prompt[None].expand(n, -1)
    if not 1 <= prompt.shape[1] < total:
        raise ValueError(f"the prompt has {prompt.shape[1]} tokens; it must be at least 1 and shorter than the "
                         f"{total} to generate")
    steps = total - prompt.shape[1]
    head = model.lm_head
    model.lm_head = _MaskedHead(head, allowed.to(device))
    n_batches = math.ceil(n / batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_batches * steps, desc="generating", unit="tok")
    out = []
    try:
        for i in range(n_batches):
            p = prompt[i * batch_size:(i + 1) * batch_size].to(device)
            done = [0]

            def report(steps_done: int, done=done):
                if bar is not None:
                    bar.update(steps_done - done[0])
                    done[0] = steps_done

            with torch.no_grad():
                ids = generate(model, p.shape[0], steps, prompt=p, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=None if seed is None else seed + i, cuda_graph=cuda_graph, progress=report)
            if bar is not None and done[0] < steps:
                bar.update(steps - done[0])
            if ids.shape != (p.shape[0], total):
                raise RuntimeError(f"generate() returned shape {tuple(ids.shape)}, expected {(p.shape[0], total)}")
            out.append(ids.cpu())
    finally:
        model.lm_head = head
        if bar is not None:
            bar.close()
    return torch.cat(out)


# -- writers -----------------------------------------------------------------------------------------
def write_wavs(waves: torch.Tensor, sample_rate: int, out_dir: Path) -> list[Path]:
    """waves: (n, T) float in [-1, 1] -> sample_000.wav ... (16-bit PCM)."""
    import soundfile as sf

    paths = []
    for i, w in enumerate(waves):
        path = out_dir / f"sample_{i:03d}.wav"
        sf.write(str(path), w.clamp(-1, 1).numpy(), int(sample_rate), subtype="PCM_16")
        paths.append(path)
    return paths


def plot_waveforms(waves: torch.Tensor, sample_rate: int, path: Path, title: str = "") -> Path:
    """One row per clip (the first MAX_PLOTTED): the waveform, and its log-power spectrogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = waves[:MAX_PLOTTED]
    rows, T = shown.shape[0], shown.shape[1]
    fig, axes = plt.subplots(rows, 2, figsize=(10, 1.6 * rows + 0.6), squeeze=False)
    t = torch.arange(T) / sample_rate
    n_fft = max(8, min(512, 1 << int(math.log2(max(T, 2)))))
    window = torch.hann_window(n_fft)
    for i, w in enumerate(shown):
        axes[i, 0].plot(t.numpy(), w.numpy(), linewidth=0.5)
        axes[i, 0].set_ylim(-1, 1)
        axes[i, 0].set_ylabel(f"{i:03d}", rotation=0, labelpad=15)
        spec = torch.stft(w, n_fft, hop_length=max(1, n_fft // 4), window=window, return_complex=True, center=True)
        power = (spec.abs() ** 2 + 1e-10).log10()
        axes[i, 1].imshow(power.numpy(), origin="lower", aspect="auto", cmap="magma",
                          extent=(0, T / sample_rate, 0, sample_rate / 2))
    axes[-1, 0].set_xlabel("seconds")
    axes[-1, 1].set_xlabel("seconds (spectrogram, Hz)")
    more = f" (first {MAX_PLOTTED} of {waves.shape[0]})" if waves.shape[0] > MAX_PLOTTED else ""
    fig.suptitle((title + more).strip(), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_fasta(seqs: list[str], path: Path, names: list[str] | None = None, width: int = 60) -> Path:
    with open(path, "w") as f:
        for i, s in enumerate(seqs):
            f.write(f">{names[i] if names else f'sample_{i:03d}'}\n")
            for start in range(0, len(s), width):
                f.write(s[start:start + width] + "\n")
    return path


# -- the command -------------------------------------------------------------------------------------
def _data_kind(cfg) -> str:
    target = str(cfg.get("data", {}).get("_target_", ""))
    if target in AUDIO_TARGETS:
        return "audio"
    if target in DNA_TARGETS:
        return "dna"
    raise SystemExit(f"mamba-seq generate: the run's data module {target!r} is neither audio ({AUDIO_TARGETS[0]}) "
                     f"nor DNA ({', '.join(DNA_TARGETS[::2])})")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"mamba-seq generate: device={name} but no CUDA device is available; use device=cpu")
    return name


def prompt_files(spec: str) -> list[Path]:
    """prompt=: a WAV/FLAC file, a folder of them, or a glob; several joined by commas -> the files
    in that order (a folder's and a glob's sorted by name)."""
    from data_modules.audio import AUDIO_SUFFIXES

    files: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        path = Path(part)
        if path.is_dir():
            found = sorted(q for q in path.iterdir() if q.suffix.lower() in AUDIO_SUFFIXES and q.is_file())
        elif glob.has_magic(part):
            found = sorted(Path(q) for q in glob.glob(part) if Path(q).suffix.lower() in AUDIO_SUFFIXES)
        else:
            found = [path]  # read_audio names it if it is missing or unreadable
        if not found:
            raise SystemExit(f"mamba-seq generate: prompt={part!r} holds no {'/'.join(AUDIO_SUFFIXES)} file")
        files += found
    return files


def _audio_prompts(args: dict, cfg, codec, sample_rate: int) -> tuple[torch.Tensor, list[Path], list[torch.Tensor]]:
    """-> (ids (k, P) long, the k prompt files, the k waves after the prompt): the codec's id of
    silence (k = 1, no file), or the first prompt_seconds of each prompt recording (read,
    resampled and normalised as the run's data were)."""
    from data_modules.audio import normalize_wave, read_audio

    if not args["prompt"]:
        return codec.encode(torch.zeros(1, 1)), [], []
    files = prompt_files(args["prompt"])
    want = max(1, round(args["prompt_seconds"] * sample_rate))
    how, rms = cfg.data.get("normalize", "none") or "none", float(cfg.data.get("target_rms", 0.1))
    waves = [normalize_wave(read_audio(f, sample_rate), how, rms) for f in files]  # ValueError naming a bad file
    if len(files) == 1 and len(waves[0]) < want:
        log.warning("prompt %s holds %.3f s, less than prompt_seconds=%s: using all of it", files[0],
                    len(waves[0]) / sample_rate, args["prompt_seconds"])
        want = len(waves[0])
    for f, w in zip(files, waves):  # one length for all: the streams of a batch advance together
        if len(w) < want:
            raise SystemExit(f"mamba-seq generate: prompt {f} holds {len(w) / sample_rate:.3f} s, less than "
                             f"prompt_seconds={args['prompt_seconds']}: lower prompt_seconds or leave the file out")
    ids = torch.stack([codec.encode(w[:want]) for w in waves])
    return ids, files, [w[want:] for w in waves]


def _prompt_labels(files: list[Path]) -> list[str] | None:
    """The class of each prompt recording from its file name (FSDD) or folder (Speech
    Commands), as the data module reads them; None if any has none."""
    from data_modules.audio import clip_from_name

    labels = [clip_from_name(f.resolve(), f.resolve().parent.parent).label for f in files]
    return labels if all(labels) else None


def _dna_prompt(args: dict, tokenizer, rng: torch.Generator, n: int) -> torch.Tensor:
    """-> (P,) or (n, 1) long: the prompt's bases, or one random A/C/G/T per sequence."""
    text = args["prompt"]
    if not text:
        bases = torch.tensor([tokenizer.base_ids[b] for b in "ACGT"])
        return bases[torch.randint(0, 4, (n, 1), generator=rng)]
    path = Path(text)
    if path.is_file():
        lines, seen = [], False
        with open(path) as f:
            for line in f:
                if line.startswith(">"):
                    if seen:
                        break
                    seen = True
                    continue
                lines.append(line.strip())
        text = "".join(lines)
    return torch.as_tensor(tokenizer.encode(text, where=f"prompt {args['prompt']}"))


def generate_from_checkpoint(args: dict) -> dict:
    """Run `mamba-seq generate` with parsed arguments (parse_args); -> a summary dict (also in
    generate.json): kind, files, shapes, timing, scores if any."""
    from omegaconf import OmegaConf

    cfg = run_config(args["ckpt_path"], args["config"])
    kind = _data_kind(cfg)
    task_target = str(cfg.get("task", {}).get("_target_", ""))
    if task_target not in LM_TARGETS:
        raise SystemExit(f"mamba-seq generate: needs a causal-LM run (task=causal_lm); this run's task is {task_target!r}")
    if args["classifier"] and kind != "audio":
        raise SystemExit("mamba-seq generate: classifier= scores audio clips; this is a DNA run")
    device = _device(args["device"])
    task = load_lm(args["ckpt_path"])
    model = task.model.to(device)
    config = model.config
    run_dir = Path(args["ckpt_path"]).resolve().parent.parent
    out = Path(args["out_dir"]) if args["out_dir"] else run_dir / "generated" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    allowed = torch.zeros(config.padded_vocab_size, dtype=torch.bool)
    rng = torch.Generator().manual_seed(args["seed"] if args["seed"] is not None else int(time.time()))
    sampling = dict(batch_size=args["batch_size"], temperature=args["temperature"], top_k=args["top_k"],
                    top_p=args["top_p"], seed=args["seed"], device=device, progress=True,
                    cuda_graph={"true": True, "false": False}.get(args["cuda_graph"], "auto"))
    summary = {"kind": kind, "ckpt_path": str(args["ckpt_path"]), "out_dir": str(out),
               "args": {k: v for k, v in args.items()}, "model_parameters": model.num_parameters(),
               "device": device}
    start = time.perf_counter()

    if kind == "audio":
        from data_modules.audio import AudioCodec

        data = cfg.data
        codec = AudioCodec(str(data.get("codec", "mu_law")), int(data.get("bits", 8)))
        sample_rate = int(data.sample_rate)
        if config.vocab_size != codec.vocab_size:
            raise SystemExit(f"mamba-seq generate: the checkpoint's model has vocab_size {config.vocab_size}, the run's "
                             f"codec {codec} has {codec.vocab_size} ids; is config={args['config']} this run's?")
        total = max(2, round(args["seconds"] * sample_rate))
        prompts, prompt_paths, rests = _audio_prompts(args, cfg, codec, sample_rate)
        n_prompt = prompts.shape[1]
        if n_prompt >= total:
            raise SystemExit(f"mamba-seq generate: the prompt (prompt_seconds={args['prompt_seconds']}, "
                             f"{n_prompt} samples) must be shorter than seconds={args['seconds']} ({total} samples)")
        allowed[: codec.vocab_size] = True
        of_clip = torch.arange(args["n"]) % prompts.shape[0]  # clip i continues prompt i mod k
        ids = sample_tokens(model, args["n"], total, prompts[of_clip], allowed, **sampling)
        waves = codec.decode(ids)
        files = write_wavs(waves, sample_rate, out)
        shown = (f"prompt {prompt_paths[0].name}" if len(prompt_paths) == 1 else f"{len(prompt_paths)} prompts")
        title = (f"{Path(args['ckpt_path']).name}: T={args['temperature']} top_k={args['top_k']} top_p={args['top_p']}"
                 + (f", {shown} ({n_prompt / sample_rate:.2f} s)" if prompt_paths else ""))
        files.append(plot_waveforms(waves, sample_rate, out / "waveforms.png", title))
        summary.update(sample_rate=sample_rate, codec=repr(codec), samples_per_clip=total,
                       prompt_samples=n_prompt if prompt_paths else 0,
                       prompt_files=[str(prompt_paths[i]) for i in of_clip] if prompt_paths else [])
        if args["classifier"]:
            from .generation_scoring import continuation_scores, load_classifier, score_clips

            classifier = load_classifier(args["classifier"])
            scores = score_clips(classifier, waves, sample_rate=sample_rate, batch_size=args["batch_size"])
            labels = _prompt_labels(prompt_paths) if prompt_paths else None
            if labels is not None and set(labels) <= {str(c) for c in classifier.hparams.class_names}:
                scores["continuation"] = continuation_scores(
                    classifier, waves[:, n_prompt:], [rests[i][: total - n_prompt] for i in of_clip],
                    [labels[i] for i in of_clip], sample_rate, batch_size=args["batch_size"])
            elif prompt_paths:
                log.info("the prompts' file names carry no class of the classifier's: no continuation accuracy")
            scores["classifier"] = str(args["classifier"])
            (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
            files.append(out / "scores.json")
            summary["scores"] = scores
    else:
        from data_modules.tokenizers import DNATokenizer

        tokenizer = DNATokenizer()
        for b in "ACGTN":
            allowed[tokenizer.base_ids[b]] = True
        prompt = _dna_prompt(args, tokenizer, rng, args["n"])
        if prompt.shape[-1] >= args["length"]:
            raise SystemExit(f"mamba-seq generate: the prompt has {prompt.shape[-1]} bases; it must be shorter than "
                             f"length={args['length']}")
        ids = sample_tokens(model, args["n"], args["length"], prompt, allowed, **sampling)
        seqs = [tokenizer.decode(row) for row in ids]
        files = [write_fasta(seqs, out / "generated.fa")]
        summary.update(bases_per_sequence=args["length"], prompt_bases=int(prompt.shape[-1]) if args["prompt"] else 0)

    summary["elapsed_s"] = time.perf_counter() - start
    summary["files"] = [str(p) for p in files]
    summary["n"] = args["n"]
    summary["run_config"] = OmegaConf.to_container(cfg.get("data"), resolve=False)
    (out / "generate.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def main(argv: list[str]) -> int:
    """`mamba-seq generate key=value ...`; prints a summary."""
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage())
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    summary = generate_from_checkpoint(parse_args(argv))
    lines = [f"mamba-seq generate: {summary['n']} {'clips' if summary['kind'] == 'audio' else 'sequences'} in "
             f"{summary['elapsed_s']:.1f} s; outputs in {summary['out_dir']}"]
    if "scores" in summary:
        s = summary["scores"]
        lines.append(f"  inception score = {s['inception_score']:.3f} (of at most {len(s['class_names'])}); "
                     f"classes: {s['class_histogram']}")
        if "continuation" in s:
            c = s["continuation"]
            real = f"{c['real_rest']['accuracy']:.3f}" if c["real_rest"] else "n/a"
            lines.append(f"  continuations: accuracy {c['generated']['accuracy']:.3f} on the generated part "
                         f"(n {c['generated']['n']}, chance {c['chance']:.3f}, binomial p {c['binomial_p']:.2g}); "
                         f"real rest of the prompts: {real}")
    print("\n".join(lines), flush=True)
    return 0
