"""NonFiniteGuard: a NaN loss at step k stops the run naming the step and batch (action=stop) or skips
that optimizer step (action=skip); either way no checkpoint with non-finite weights is written."""

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tasks.checkpointing import AtomicModelCheckpoint
from tasks.numeric_guard import NonFiniteError, NonFiniteGuard

K = 3  # the global step whose loss is NaN


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if self.global_step == K:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


def fit(tmp_path, action, steps=6):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    guard = NonFiniteGuard(action)
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = pl.Trainer(max_steps=steps, callbacks=[guard, ckpt], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", gradient_clip_val=1.0)
    model = Tiny()
    return trainer, model, guard, DataLoader(data, batch_size=4)


def last_weights(tmp_path):
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


def test_stop_names_step_and_batch_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer, model, guard, loader = fit(tmp_path, "stop")
    with pytest.raises(NonFiniteError, match=f"global step {K}, batch index {K}"):
        trainer.fit(model, loader)
    step, state = last_weights(tmp_path)
    assert step == K
    assert all(torch.isfinite(v).all() for v in state.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_leaves_the_weights_unchanged_at_the_bad_step_and_goes_on(tmp_path):
    trainer, model, guard, loader = fit(tmp_path, "skip", steps=K)
    trainer.fit(model, loader)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer2, model2, guard2, _ = fit(tmp_path / "b", "skip", steps=K + 1)
    trainer2.fit(model2, loader)
    # step K (NaN) changed nothing: after K+1 steps the weights equal those after K steps
    for k, v in model2.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert guard2.skipped == 1
    trainer3, model3, guard3, _ = fit(tmp_path / "c", "skip", steps=K + 3)
    trainer3.fit(model3, loader)
    assert guard3.skipped == 1 and trainer3.global_step == K + 3
    step, state = last_weights(tmp_path / "c")
    assert step == K + 3 and all(torch.isfinite(v).all() for v in state.values())


def test_checkpoint_refuses_non_finite_weights(tmp_path):
    trainer, model, guard, loader = fit(tmp_path, "stop", steps=2)
    trainer.fit(model, loader)
    good = last_weights(tmp_path)[1]
    with torch.no_grad():
        model.layer.weight[0, 0] = float("nan")
    ckpt = trainer.checkpoint_callback
    ckpt._save_checkpoint(trainer, str(tmp_path / "last.ckpt"))
    for k, v in last_weights(tmp_path)[1].items():
        assert torch.equal(v, good[k])


def test_bad_action_is_refused():
    with pytest.raises(ValueError, match="stop.*skip"):
        NonFiniteGuard("ignore")
