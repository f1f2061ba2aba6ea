"""Hugging Face: ``save_pretrained``, ``from_pretrained`` and ``Trainer`` checkpoints keep depths.

Models are built from configs (nothing is downloaded). The extra state of every
stochdepth module is one uint8 tensor, which safetensors takes; ``from_pretrained``
builds the model on the meta device and then loads it, and a ``Trainer`` run killed
after a checkpoint and resumed from it draws the same depths and ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from stochdepth import LayerDropList, RepeatedBlock, SeededDepth

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency")


class DepthConfig(transformers.PretrainedConfig):  # type: ignore[misc]
    model_type = "stochdepth-test"

    def __init__(self, width: int = 8, layers: int = 3, seed: int = 1, **kwargs: Any) -> None:
        self.width, self.layers, self.seed = width, layers, seed
        super().__init__(**kwargs)


class DepthModel(transformers.PreTrainedModel):  # type: ignore[misc]
    """A tiny model with a RepeatedBlock and a LayerDropList, seeded."""

    config_class = DepthConfig

    def __init__(self, config: DepthConfig) -> None:
        super().__init__(config)
        width = config.width
        self.embed = nn.Linear(3, width)
        self.core = RepeatedBlock(
            nn.Sequential(nn.Linear(width, width), nn.Tanh()), SeededDepth(0, 4, seed=config.seed)
        )
        self.stack = LayerDropList(
            [nn.Linear(width, width) for _ in range(config.layers)],
            0.5,
            residual=True,
            seed=config.seed + 1,
        )
        self.head = nn.Linear(width, 1)
        self.post_init()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        out = self.head(self.stack(self.core(self.embed(x))))
        result: dict[str, Any] = {"logits": out}
        if labels is not None:
            result["loss"] = nn.functional.mse_loss(out, labels)
        return result


def draws(model: DepthModel, count: int) -> list[Any]:
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    model.train()
    found = []
    for _ in range(count):
        model(x)
        found.append((model.core.last_depth, model.stack.last_keep.tolist()))
    return found


def test_save_pretrained_and_from_pretrained_keep_the_generators(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DepthModel(DepthConfig())
    draws(model, 3)
    model.save_pretrained(tmp_path)
    safetensors = pytest.importorskip("safetensors.torch", reason="a test dependency")
    saved = safetensors.load_file(tmp_path / "model.safetensors")
    assert {"core._extra_state", "stack._extra_state"} <= set(saved)
    assert saved["core._extra_state"].dtype == torch.uint8
    loaded = DepthModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.stack.draws == 3
    fresh = draws(DepthModel(DepthConfig()), 5)
    want = draws(model, 5)
    assert draws(loaded, 5) == want
    assert fresh != want  # the state did come from the file


class Points(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(5)
        self.x = torch.randn(32, 3, generator=generator)
        self.y = torch.randn(32, 1, generator=generator)

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "labels": self.y[index]}


class RecordDepths(transformers.TrainerCallback):  # type: ignore[misc]
    def __init__(self, stop_at: int | None = None) -> None:
        self.depths: list[tuple[int, Any, list[bool]]] = []
        self.stop_at = stop_at

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> Any:
        self.depths.append(
            (state.global_step, model.core.last_depth, model.stack.last_keep.tolist())
        )
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_training_stop = True  # the process is "killed" after the save
        return control


def run_trainer(
    out: Path, model_seed: int, callback: RecordDepths, resume: str | None = None
) -> DepthModel:
    torch.manual_seed(model_seed)
    model = DepthModel(DepthConfig(seed=model_seed + 1))
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=8,
        save_steps=4,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        seed=0,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Points(), callbacks=[callback]
    )
    trainer.train(resume_from_checkpoint=resume)
    return model


def test_a_trainer_run_killed_and_resumed_draws_the_same_depths(tmp_path: Path) -> None:
    whole = RecordDepths()
    uninterrupted = run_trainer(tmp_path / "whole", 0, whole)
    first = RecordDepths(stop_at=4)
    run_trainer(tmp_path / "cut", 0, first)
    checkpoint = tmp_path / "cut" / "checkpoint-4"
    assert (checkpoint / "model.safetensors").exists()
    second = RecordDepths()
    # other weights and other seeds: everything must come from the checkpoint
    resumed = run_trainer(tmp_path / "cut", 1, second, resume=str(checkpoint))
    assert [step for step, *_ in first.depths] == [1, 2, 3, 4]
    assert [step for step, *_ in second.depths] == [5, 6, 7, 8]
    assert first.depths + second.depths == whole.depths
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
