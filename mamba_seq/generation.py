"""Autoregressive generation with a causal Mamba model: sampling and a constant-memory decode loop.

    ids = generate(model, batch_size=16, num_steps=16000, first_token=silence_code, seed=0)

- The prompt (if any) goes through one parallel forward (`model.prefill`), which leaves the
  recurrent state after it in the cache (on CUDA a prompt of up to PROMPT_BY_STEPS_MAX tokens
  goes through the decode step instead); then one `model.step` per new token. Memory is constant
  in the number of steps: the cache is updated in place and the only buffer that grows with
  num_steps is the output tensor, allocated once up front.
- Sampling: temperature, then top-k, then top-p (nucleus) filtering, each row on its own; a
  sample is drawn with the exponential-race trick (argmax_i p_i / E_i with E_i ~ Exp(1) picks i
  with probability p_i): one random kernel, no host sync, so it can live inside a CUDA graph.
  Only ids below config.vocab_size are ever drawn (the padded vocabulary rows are never tokens).
- Reproducible: every draw comes from one torch.Generator on the model's device, seeded by `seed`.
- CUDA graphs: one decode step (embedding, every layer's step, norm, LM head, sampling) is
  captured once and replayed per token: the per-token cost becomes one graph launch instead of a
  few hundred kernel launches. The graph reads and writes only static tensors (the cache and a
  token buffer) and draws from the seeded generator registered with the graph, so eager and
  graph decoding give the same tokens for the same seed.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .inference import InferenceCache, check_can_decode

__all__ = ["sample_next", "filter_top_k", "filter_top_p", "generate", "make_decode_step"]

# On CUDA, prompts up to this long go through the decode step (captured: thousands of steps a
# second) instead of the parallel prefill, whose Triton kernels would be compiled for this dtype
# and shape first: on a fresh machine that took longer than decoding a whole second of audio.
# Longer prompts amortise it and take the prefill; on the CPU the prefill is always the faster.
PROMPT_BY_STEPS_MAX = 16384


def filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    # logits (batch, V) -> (batch, V): exactly the top_k largest of each row kept, the rest -inf
    # (ties at the k-th value are broken by topk's order, so exactly k survive); 0 = keep all
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    values, idx = logits.topk(top_k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, idx, values)


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    # logits (batch, V) -> (batch, V): per row, the minimal nucleus kept (the most probable tokens
    # whose total probability first reaches top_p), the rest -inf; 1.0 = keep all
    if top_p >= 1.0:
        return logits
    probs, idx = F.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the more probable tokens
    drop_sorted = mass_before >= top_p  # the nucleus is already complete without this token
    drop = torch.empty_like(drop_sorted).scatter_(-1, idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,  # (batch, V)
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # -> ids (batch,) int64
    """One token per row. temperature 0 (or top_k 1) is greedy (argmax, no random draw);
    otherwise softmax(logits / temperature) restricted to the top_k, then to the top_p nucleus.
    No host sync: safe inside a CUDA graph capture."""
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample_next needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got "
                         f"{temperature}, {top_k}, {top_p}")
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    logits = filter_top_p(filter_top_k(logits, top_k), top_p)
    probs = F.softmax(logits, dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_min_(1e-20)
    return (probs / race).argmax(dim=-1)


class _EagerStep:
    def __init__(self, model, cache: InferenceCache, sample: Callable):
        self.model, self.cache, self.sample = model, cache, sample

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens (batch,) -> next tokens (batch,)
        return self.sample(self.model.step(tokens, self.cache))


class _GraphStep:
    """One decode step captured in a CUDA graph. Capturing runs the step a few times (warm-up:
    Triton compiles, cuBLAS picks its kernels) and so moves the cache and the generator: the
    caller resets both afterwards. Replay reads `self.tokens` and overwrites it with the next ones."""

    def __init__(self, model, cache: InferenceCache, sample: Callable, generator: torch.Generator):
        self.model, self.cache, self.sample = model, cache, sample
        self.tokens = torch.zeros(cache.batch_size, dtype=torch.long, device=generator.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        if hasattr(self.graph, "register_generator_state"):  # torch >= 2.5: a non-default generator
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self._body()

    def _body(self):
        self.tokens.copy_(self.sample(self.model.step(self.tokens, self.cache)))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens is not self.tokens:
            self.tokens.copy_(tokens)
        self.graph.replay()
        self.cache.seqlen_offset += 1  # the Python side of model.step does not replay
        return self.tokens


def make_decode_step(model, cache: InferenceCache, sample: Callable, generator: torch.Generator,
                     cuda_graph: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """tokens (batch,) -> next tokens (batch,), advancing `cache` one position: model.step, then
    sample(logits). With cuda_graph the step is captured once (which runs it a few times: the
    cache is reset to zeros afterwards, and the caller must re-seed `generator`); the tokens it
    returns live in a static buffer that the next call overwrites."""
    if not cuda_graph:
        return _EagerStep(model, cache, sample)
    step = _GraphStep(model, cache, sample, generator)
    cache.reset()
    return step


@torch.no_grad()
def generate(
    model,  # a causal MambaLMHeadModel
    batch_size: int,
    num_steps: int,
    prompt: torch.Tensor | None = None,  # (batch, P) int64
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    cuda_graph: bool | str = "auto",
    progress: Callable[[int], None] | None = None,
    first_token: int | torch.Tensor | None = None,  # int or (batch,) int64, when there is no prompt
    prompt_by_steps: bool | None = None,
) -> torch.Tensor:  # -> (batch, P + num_steps) int64: the prompt, then num_steps generated tokens
    """Sample num_steps tokens per stream after `prompt` (kept as the output's prefix), or, with no
    prompt, after `first_token` (e.g. the mu-law code of silence; it is fed to the model but not
    part of the output). seed: the generator's seed (None: a fresh random one). cuda_graph: "auto"
    (on for a CUDA model), True or False. progress(n) is called after each of the n tokens.
    prompt_by_steps: feed the prompt through the decode step, not the parallel prefill; None: on
    CUDA for prompts of up to PROMPT_BY_STEPS_MAX tokens. The two leave the same state (up to
    rounding) but draw different random numbers, so a seed gives other samples on each path."""
    config = model.config
    check_can_decode(config)
    device = next(model.parameters()).device
    if num_steps < 0 or batch_size < 1:
        raise ValueError(f"generate needs batch_size >= 1 and num_steps >= 0, got {batch_size}, {num_steps}")
    if (prompt is None) == (first_token is None):
        raise ValueError("generate needs exactly one of prompt (batch, P) token ids or first_token (the id, or "
                         "(batch,) ids, that starts each stream, e.g. the mu-law code of silence)")
    if prompt is not None:
        if prompt.dim() != 2 or prompt.shape[0] != batch_size or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be (batch_size={batch_size}, P >= 1) token ids, got {tuple(prompt.shape)}")
        prompt = prompt.to(device=device, dtype=torch.long)
        P = prompt.shape[1]
    else:
        first = torch.as_tensor(first_token, dtype=torch.long, device=device).expand(batch_size).clone()
        P = 0
    if cuda_graph == "auto":
        cuda_graph = device.type == "cuda"
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA model; this one is on {device}")

    out = torch.empty(batch_size, P + num_steps, dtype=torch.long, device=device)
    if P:
        out[:, :P] = prompt
    if num_steps == 0:
        return out
    generator = torch.Generator(device=device)
    seed = generator.seed() if seed is None else seed
    generator.manual_seed(seed)
    vocab = config.vocab_size

    def sample(logits):  # (batch, padded_vocab) -> (batch,): padded rows are never tokens
        return sample_next(logits[:, :vocab], temperature, top_k, top_p, generator)

    cache = model.allocate_inference_cache(batch_size)
    step = make_decode_step(model, cache, sample, generator, bool(cuda_graph))
    generator.manual_seed(seed)  # a capture draws during its warm-up: start again from the seed

    done = 0
    if prompt_by_steps is None:
        prompt_by_steps = device.type == "cuda" and P <= PROMPT_BY_STEPS_MAX
    if P:
        if prompt_by_steps:
            for t in range(P):  # only the draw after the prompt's last token is kept
                tokens = step(prompt[:, t])
        else:
            tokens = sample(model.prefill(prompt, cache))
        out[:, P] = tokens
        done = 1
        if progress is not None:
            progress(done)
    else:
        tokens = first
    while done < num_steps:
        tokens = step(tokens)
        out[:, P + done] = tokens
        done += 1
        if progress is not None:
            progress(done)
    return out
