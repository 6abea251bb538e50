"""Evaluating a model at other values of some of its parameters without touching its own tensors.

Grafting evaluates the pre-trained model at a graft (and takes gradients through a soft one);
interpolation evaluates it along a path between two checkpoints. Both hold one model and swap
the tensors in for each forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import Tensor, nn

from lmft.io import LmftError


@contextlib.contextmanager
def substitute(model: nn.Module, params: Mapping[str, Tensor]) -> Iterator[None]:
    """Within the block the parameters named in ``params`` are those tensors; restored after.

    This is ``torch.func.functional_call``'s reparametrisation done by hand, because that one
    swaps a slot once per *name*: a module registered under two names (the Classifier's
    ``lm_head`` is also ``backbone.<head>``) is swapped twice and left holding the new tensor.
    Here every module is visited once and every slot holding a replaced parameter (tied
    weights included) gets the new tensor, so gradients reach ``params`` through all uses.
    """
    named = dict(model.named_parameters(remove_duplicate=False))
    unknown = [n for n in params if n not in named]
    if unknown:
        raise LmftError(f"{unknown[:5]} are not parameters of the model")
    new: dict[int, Tensor] = {}
    for name, tensor in params.items():
        if new.setdefault(id(named[name]), tensor) is not tensor:
            raise LmftError(f"two different tensors given for the tied parameter {name!r}")
    swapped: list[tuple[nn.Module, str, Tensor]] = []
    try:
        for module in model.modules():
            for attr, old in module._parameters.items():
                if old is not None and id(old) in new:
                    swapped.append((module, attr, old))
        for module, attr, old in swapped:
            module._parameters[attr] = new[id(old)]
        yield
    finally:
        for module, attr, old in swapped:
            module._parameters[attr] = old


class Substituted(nn.Module):
    """A Classifier whose named parameters are replaced by ``params`` during each forward.

    The wrapped model's own tensors are never modified, so a model holding ``theta_0`` can be
    evaluated at a graft or along an interpolation path without a second copy of it.
    """

    def __init__(self, model: nn.Module, params: Mapping[str, Tensor]):
        super().__init__()
        self.model = model
        self.params = dict(params)
        self.train(model.training)  # a new Module says training=True; mirror the model instead

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                mask_pos: Tensor | None = None) -> Tensor:
        with substitute(self.model, self.params):
            return self.model(input_ids, attention_mask, token_type_ids=token_type_ids, mask_pos=mask_pos)
