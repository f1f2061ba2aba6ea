"""`DynamicNet`: the article's model, assembled from `RepeatedBlock`."""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn
from torch.nn import functional

from ._block import DEFAULT_DEPTH_LIMIT, EvalDepth, RepeatedBlock
from ._validation import check_int, describe
from .samplers._protocol import DepthSampler


class DynamicNet(nn.Module):
    """The article's ``DynamicNet``: ``Linear``, a randomly repeated ``Linear``, ``Linear``.

    ``input_linear`` (``D_in -> H``) and a ReLU, then one weight-shared
    ``Linear(H, H)`` + ReLU applied a sampled number of times (a
    :class:`~stochdepth.RepeatedBlock`, uniform over 0..3 by default, drawn from
    Python's ``random`` exactly as the article's ``random.randint(0, 3)``), then
    ``output_linear`` (``H -> D_out``). The three ``Linear`` layers are created in the
    article's order with PyTorch's default initialisation, so after the same
    ``torch.manual_seed`` both models hold the same weights.

    The article writes its ReLU as ``clamp(min=0)``. The two agree exactly in the
    forward pass, and in the backward pass everywhere except at a pre-activation of
    exactly zero (ReLU passes no gradient there, ``clamp`` passes it); the tests
    check that the tutorial's training runs agree digit for digit.

    A ``state_dict`` saved from the article's own model (keys ``input_linear.*``,
    ``middle_linear.*``, ``output_linear.*``) loads as it is: ``middle_linear.*`` is
    read into ``middle.layer.0.*``, and the sampler keeps its own state.

    Args:
        D_in: Input features, an int >= 1.
        H: Hidden features, an int >= 1.
        D_out: Output features, an int >= 1.
        sampler: The depth sampler of the repeated layer (default
            ``UniformDepth(0, 3)``).
        eval_depth: The repeated layer's eval-mode depth policy, as in
            :class:`~stochdepth.RepeatedBlock` (default ``"max"``).
        depth_limit: The most times one forward pass may apply the repeated layer,
            as in :class:`~stochdepth.RepeatedBlock` (default 10 000).

    Attributes:
        input_linear: ``Linear(D_in, H)``.
        middle: The :class:`~stochdepth.RepeatedBlock` around a ``LinearReLU``,
            an ``nn.Sequential(Linear(H, H), ReLU())`` whose forward makes one module
            call a repeat (hooks on its two children do not run).
        output_linear: ``Linear(H, D_out)``.

    Raises:
        TypeError: A size is not an int, or ``sampler`` is not a
            :class:`~stochdepth.DepthSampler`.
        ValueError: A size is below 1, or the sampler's ``max_depth`` is above
            ``depth_limit``.

    Example:
        >>> import torch
        >>> from stochdepth import DynamicNet, FixedDepth
        >>> model = DynamicNet(1000, 100, 10, sampler=FixedDepth(2))
        >>> model(torch.randn(64, 1000)).shape
        torch.Size([64, 10])
        >>> model.middle.last_depth
        2
    """

    input_linear: nn.Linear
    middle: RepeatedBlock
    output_linear: nn.Linear

    def __init__(
        self,
        D_in: int,  # noqa: N803 - the article's names
        H: int,  # noqa: N803
        D_out: int,  # noqa: N803
        sampler: DepthSampler | None = None,
        *,
        eval_depth: EvalDepth = "max",
        depth_limit: int = DEFAULT_DEPTH_LIMIT,
    ) -> None:
        super().__init__()
        d_in = check_int("D_in", D_in, minimum=1)
        hidden = check_int("H", H, minimum=1)
        d_out = check_int("D_out", D_out, minimum=1)
        self.input_linear = nn.Linear(d_in, hidden)
        repeated = LinearReLU(hidden)
        self.middle = RepeatedBlock(
            repeated, sampler, eval_depth=eval_depth, depth_limit=depth_limit
        )
        self.output_linear = nn.Linear(hidden, d_out)
        self.register_load_state_dict_pre_hook(_read_article_keys)  # type: ignore[no-untyped-call]

    @property
    def middle_linear(self) -> nn.Linear:
        """The shared ``Linear(H, H)``, under the article's name."""
        return cast(nn.Linear, cast(nn.Sequential, self.middle.layer)[0])

    def forward(self, x: Tensor, *, depth: int | None = None) -> Tensor:
        """Predict ``y`` from ``x``, repeating the middle layer ``depth`` times.

        Args:
            x: Input of shape ``(..., D_in)``.
            depth: Keyword-only. Use this depth instead of drawing one (an int >= 0).

        Returns:
            The prediction, of shape ``(..., D_out)``.

        Raises:
            TypeError: ``x`` is not a tensor, or ``depth`` is not an int.
            ValueError: The last dimension of ``x`` is not ``D_in``, or ``depth`` is
                negative or above ``depth_limit``.
        """
        try:  # the checks cost nothing on the way through: they run when linear refuses x
            h_relu = self.input_linear(x).relu()
        except (TypeError, RuntimeError):
            self._check_input(x)
            raise
        # Without a depth, no keyword: each of the call's three frames would copy it.
        h_relu = self.middle(h_relu) if depth is None else self.middle(h_relu, depth=depth)
        y_pred: Tensor = self.output_linear(h_relu)
        return y_pred

    def _check_input(self, x: object) -> None:
        """Raise the error that names what is wrong with ``x``, if anything is."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {describe(x)}") from None
        in_features = self.input_linear.in_features
        if x.ndim == 0 or x.shape[-1] != in_features:
            raise ValueError(
                f"x must have shape (..., D_in) with D_in={in_features}, got shape {tuple(x.shape)}"
            ) from None


class LinearReLU(nn.Sequential):
    """``Sequential(Linear(H, H), ReLU())`` applied in one module call, ``DynamicNet``'s layer.

    The same children, ``state_dict`` keys (``0.weight``, ``0.bias``) and kernels as the
    ``Sequential``, whose result it equals bitwise; its forward reads the ``Linear``'s
    weights itself, so a repeat costs one module call, as in the article's loop, instead
    of three. Forward hooks on the two children therefore do not run: hook the
    ``LinearReLU`` (or the ``RepeatedBlock``) instead.
    """

    def __init__(self, features: int) -> None:
        super().__init__(nn.Linear(features, features), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        """``relu(linear(x))``."""
        linear: nn.Linear = self._modules["0"]  # type: ignore[assignment]  # no cast(): a call
        return functional.linear(x, linear.weight, linear.bias).relu()


def _read_article_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    *_: Any,
) -> None:
    """Read the article's ``middle_linear.*`` keys into ``middle.layer.0.*``."""
    renamed = False
    for name in ("weight", "bias"):
        old, new = f"{prefix}middle_linear.{name}", f"{prefix}middle.layer.0.{name}"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
            renamed = True
    if renamed:
        # The article's model has no sampler: the sampler keeps the state it has.
        state_dict.setdefault(f"{prefix}middle._extra_state", {})
