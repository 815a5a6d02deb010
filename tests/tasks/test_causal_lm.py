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
