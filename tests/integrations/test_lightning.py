"""Lightning: a LightningModule with a RepeatedBlock trains, checkpoints and resumes the depths.

``ModelCheckpoint`` saves the module's ``state_dict`` (the samplers' and generators'
state in it, as uint8 tensors) and ``Trainer.fit(ckpt_path=...)`` restores it, so that a
resumed run draws what an uninterrupted one draws. ``strategy="ddp_spawn"`` pickles the
module into two CPU processes, which its seeded generators survive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from stochdepth import LayerDropList, RepeatedBlock, SeededDepth

lightning = pytest.importorskip("lightning", reason="lightning is a test dependency")

pytestmark = [
    # Lightning's advice for real runs (more dataloader workers, a logger, a small
    # batch count per epoch for the progress bar): noise for a four-batch test.
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning:lightning"),
    # A run resumed into the directory of the run it resumes, as Lightning's docs do it.
    pytest.mark.filterwarnings(
        "ignore:Checkpoint directory .* exists and is not empty:UserWarning"
    ),
    # lightning 2.6's own pytree helper builds torch's deprecated LeafSpec.
    pytest.mark.filterwarnings(
        "ignore:`isinstance.treespec, LeafSpec.` is deprecated:FutureWarning:lightning"
    ),
]


class DepthModule(lightning.LightningModule):  # type: ignore[misc]
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.core = RepeatedBlock(
            nn.Sequential(nn.Linear(6, 6), nn.Tanh()), SeededDepth(0, 4, seed=seed)
        )
        self.stack = LayerDropList(
            [nn.Linear(6, 6) for _ in range(3)], 0.5, residual=True, seed=seed + 1
        )
        self.head = nn.Linear(6, 1)
        self.depths: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stack(self.core(self.embed(x))))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.depths.append((self.core.last_depth, self.stack.last_keep.tolist()))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def data() -> torch.utils.data.DataLoader[Any]:
    generator = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 3, generator=generator), torch.randn(16, 1, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def trainer(root: Path, epochs: int) -> Any:
    """A tiny CPU trainer whose ModelCheckpoint writes ``root/last.ckpt``."""
    checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True)
    return lightning.Trainer(
        default_root_dir=root,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
    )


def test_a_resumed_run_draws_the_depths_of_an_uninterrupted_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    whole = DepthModule(seed=1)
    trainer(tmp_path / "whole", 2).fit(whole, data())
    torch.manual_seed(0)
    cut = DepthModule(seed=1)
    trainer(tmp_path / "cut", 1).fit(cut, data())
    torch.manual_seed(1)
    resumed = DepthModule(seed=7)  # other weights, other seeds: all from the checkpoint
    trainer(tmp_path / "cut", 2).fit(resumed, data(), ckpt_path=tmp_path / "cut" / "last.ckpt")
    assert len(whole.depths) == 8
    assert cut.depths + resumed.depths == whole.depths
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


class RecordingModule(DepthModule):
    """Saves each rank's depths to ``out/rank{N}.pt`` when training ends."""

    def __init__(self, seed: int, out: str) -> None:
        super().__init__(seed)
        self.out = out

    def on_train_end(self) -> None:
        torch.save(self.depths, Path(self.out) / f"rank{self.global_rank}.pt")


def test_ddp_spawn_on_two_cpu_processes_draws_the_same_depths_on_both(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = RecordingModule(seed=1, out=str(tmp_path))
    module.core(torch.randn(1, 6))  # the generators are mid-sequence when spawn pickles them
    module.stack(torch.randn(1, 6))
    alone = DepthModule(seed=1)
    alone.load_state_dict(module.state_dict())
    run = lightning.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    run.fit(module, data())
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(first) == 2  # 4 batches, 2 per rank
    assert first == second
    x = torch.randn(1, 6)
    want = []
    for _ in range(2):  # what the parent's module would have drawn next
        alone.stack(alone.core(x))
        want.append((alone.core.last_depth, alone.stack.last_keep.tolist()))
    assert first == want
