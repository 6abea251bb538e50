"""The kinds of kernel the workflow knows: the eNTK formulas (Malladi et al. 2023) and the prompt settings.

:data:`FORMULAS` is the one registry of formulas. The contraction (:mod:`lmft.kernels.pairs`,
:mod:`lmft.kernels.tiled`) reads each formula's products from it, the kernel files their shape, the
solvers which formulas are stacked, the kernel rules their ``{formula}`` wildcard, the tables
their order; a formula added here is known everywhere. With ``J(x)`` a Jacobian of the logits
over the trainable parameters, ``x`` a training (row) example and ``y`` any example::

    sgd                <J(x), J(y)>
    signgd             <sign J(x), sign J(y)>
    asymmetric-signgd  <sign J(x), J(y)>, stacked with its flip <J(x), sign J(y)>

A formula of one product is a ``[N, C, M, C]`` kernel; one of several is *stacked*,
``[P, N, C, M, C]`` with its P products in order (the paper's asymmetric-signgd files are
``[2, ...]``), and only the solvers that read both parts (``asym``) need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmft.io import LmftError

# The operands of a product: the Jacobian of the row example (x) or of the column example (y), or its sign.
OPERANDS = ("x", "y", "sx", "sy")

# How the input is given: the task's template with the prompt (or causal) head, or the plain input with a cls head;
# each setting -> how its head starts: the pre-trained (M)LM head, or a logistic regression on the frozen features.
PROMPTS = {"prompt": "pretrained", "noprompt": "logistic"}


@dataclass(frozen=True)
class Formula:
    """One kernel formula: the products it sums over the trainable parameters, each a (row operand,
    column operand) pair of :data:`OPERANDS`."""

    name: str
    products: tuple[tuple[str, str], ...]

    @property
    def stacked(self) -> bool:
        """Whether its file stacks several products, ``[P, N, C, M, C]`` (else ``[N, C, M, C]``)."""
        return len(self.products) > 1

    @property
    def lead(self) -> tuple[int, ...]:
        """The leading dimension of a stacked kernel (``(P,)``), none otherwise."""
        return (len(self.products),) if self.stacked else ()


FORMULAS: dict[str, Formula] = {f.name: f for f in (
    Formula("sgd", (("x", "y"),)),
    Formula("signgd", (("sx", "sy"),)),
    Formula("asymmetric-signgd", (("sx", "y"), ("x", "sy"))),
)}


def get_formula(name: str) -> Formula:
    """The registered formula ``name``; raises naming the known ones otherwise."""
    if name not in FORMULAS:
        raise LmftError(f"unknown kernel formula {name!r}; one of {', '.join(FORMULAS)}")
    return FORMULAS[name]


def get_formulas(names: Sequence[str], caller: str) -> list[Formula]:
    """The registered formulas ``names``, repeats dropped, in order; raises naming ``caller`` on none."""
    names = list(dict.fromkeys(names))
    if not names:
        raise LmftError(f"{caller}: no formula")
    return [get_formula(name) for name in names]
