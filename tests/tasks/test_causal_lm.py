import math

import torch

from tasks.causal_lm import CausalLMTask, adamw_param_groups, warmup_cosine


def test_warmup_cosine_shape():
    lrs = [warmup_cosine(s, 10, 110, 0.1) for s in range(110)]
    assert lrs[0] == 0.1 and abs(lrs[9] - 1.0) < 1e-12  # linear ramp to the peak
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone decay
    assert abs(warmup_cosine(110, 10, 110, 0.1) - 0.1) < 1e-12
    assert abs(warmup_cosine(60, 10, 110, 0.1) - (0.1 + 0.9 * 0.5)) < 1e-12  # half-way point


def test_param_groups_cover_every_parameter_once():
    task = CausalLMTask({"d_model": 16, "n_layer": 2, "vocab_size": 10, "d_state": 4})
    groups = adamw_param_groups(task.model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in task.model.parameters()}  # tied head counted once
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(task.model.backbone.layers[0].mixer.A_log) not in decayed
    assert id(task.model.backbone.layers[0].mixer.in_proj.weight) in decayed


def test_training_steps_learn_a_periodic_sequence():
    """A period-7 sequence is perfectly predictable: a few dozen AdamW steps must drive the
    loss far below the uniform 4-base entropy of 2 bits (property, not a snapshot)."""
    torch.manual_seed(0)
    task = CausalLMTask({"d_model": 32, "n_layer": 2, "vocab_size": 10, "d_state": 8}, lr=3e-3)
    period = torch.tensor([5, 6, 7, 8, 5, 5, 7])
    seq = period.repeat(20)[None].repeat(4, 1)
    batch = {"input_ids": seq[:, :-1], "labels": seq[:, 1:]}
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = task._token_nll(batch).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first / math.log(2) > 2.0
    assert loss.item() / math.log(2) < 0.5


def test_hparams_are_plain_data():
    task = CausalLMTask({"d_model": 16, "n_layer": 1, "vocab_size": 10})
    assert isinstance(task.hparams["model"], dict)
    assert task.hparams["model"]["d_model"] == 16


def test_backbones_that_see_the_next_base_are_refused():
    """Bidirectional and RC-equivariant backbones read position t+1 (the label) at t."""
    import pytest

    from data_modules.tokenizers import DNATokenizer

    cmap = DNATokenizer()._complement.tolist()
    for extra in ({"bidirectional": True}, {"rc_equivariant": True, "complement_map": cmap}):
        with pytest.raises(ValueError, match="task=masked_lm"):
            CausalLMTask({"d_model": 16, "n_layer": 1, "vocab_size": 10, **extra})


def _padded_audio_batch(lengths: list[int], L: int, vocab: int = 256, seed: int = 0):
    """Right-padded clips as the audio module batches them: input_ids past a clip's end hold an
    arbitrary id, labels there are -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), L + 1), generator=g)
    labels = ids[:, 1:].clone()
    for i, n in enumerate(lengths):
        labels[i, n:] = -100
    return {"input_ids": ids[:, :-1], "labels": labels}, ids


def test_padded_targets_change_nothing():
    """Loss, val/test NLL and predict scores are means over the real targets only: they equal an
    independent per-clip calculation on the unpadded prefixes, whatever the padding holds."""
    torch.manual_seed(0)
    task = CausalLMTask({"d_model": 16, "n_layer": 2, "vocab_size": 256, "d_state": 4}).eval()
    lengths, L = [40, 17, 64], 64
    batch, ids = _padded_audio_batch(lengths, L)
    # independent: each clip alone, unpadded, summed NLL with log_softmax
    total, count, per_clip = 0.0, 0, []
    with torch.no_grad():
        for i, n in enumerate(lengths):
            logits = task.model(ids[i:i + 1, :n])[0].double()
            nll = -logits.log_softmax(-1).gather(-1, ids[i, 1:n + 1, None]).sum().item()
            total, count = total + nll, count + n
            per_clip.append(nll / n / math.log(2))
        loss, n_real = task._real_mean(batch)
    assert int(n_real) == sum(lengths)
    assert math.isclose(loss.item(), total / count, rel_tol=1e-5)

    # the padding's input ids are irrelevant (a causal model never reads right of a target)
    other = dict(batch, input_ids=batch["input_ids"].clone())
    for i, n in enumerate(lengths):
        other["input_ids"][i, n + 1:] = 0
    with torch.no_grad():
        assert math.isclose(task._real_mean(other)[0].item(), total / count, rel_tol=1e-5)

    # val: token-weighted over batches, so splitting the clips into batches changes nothing
    with torch.no_grad():
        task.validation_step({k: v[:1] for k, v in batch.items()}, 0)
        task.validation_step({k: v[1:] for k, v in batch.items()}, 1)
    assert math.isclose(task.val_nll.compute().item(), total / count, rel_tol=1e-5)
    task.val_nll.reset()
    with torch.no_grad():  # a batch with no real target at all adds nothing
        empty = {"input_ids": batch["input_ids"][:1], "labels": torch.full_like(batch["labels"][:1], -100)}
        task.test_step(empty, 0)
        task.test_step(batch, 1)
    assert math.isclose(task.test_nll.compute().item(), total / count, rel_tol=1e-5)

    with torch.no_grad():
        pred = task.predict_step(dict(batch, path=["a", "b", "c"], class_label=torch.tensor([0, 1, 2])), 0)
    assert pred["length"] == lengths and pred["path"] == ["a", "b", "c"]
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(pred["bits_per_sample"], per_clip))


def test_padded_training_gradient_ignores_padding():
    """Training: the gradient of a padded batch equals that of its real targets alone."""
    torch.manual_seed(0)
    task = CausalLMTask({"d_model": 16, "n_layer": 1, "vocab_size": 256, "d_state": 4})
    batch, ids = _padded_audio_batch([30, 12], 32, seed=1)
    loss = task._real_mean(batch)[0]
    grads = torch.autograd.grad(loss, [task.model.backbone.embedding.weight])[0]
    logits = [task.model(ids[i:i + 1, :n])[0] for i, n in enumerate([30, 12])]
    ref = torch.cat([torch.nn.functional.cross_entropy(lg, ids[i, 1:n + 1], reduction="none")
                     for i, (lg, n) in enumerate(zip(logits, [30, 12]))]).mean()
    ref_grads = torch.autograd.grad(ref, [task.model.backbone.embedding.weight])[0]
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5)
    assert torch.allclose(grads, ref_grads, atol=1e-6, rtol=1e-4)
