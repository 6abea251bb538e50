"""Method types of the fine-tuning stage: one module each, registered by name.

=================  ==============================================================================
type               module: what a job of it does
=================  ==============================================================================
``ft``             :mod:`~lmft.finetune.methods.ft`: first-order fine-tuning, the best dev checkpoint kept
``mezo``           :mod:`~lmft.finetune.methods.mezo`: zeroth-order fine-tuning (MeZO), the best dev kept
``fzoo``           :mod:`~lmft.finetune.methods.fzoo`: zeroth-order, FZOO's normalised one-sided Rademacher steps
``mezo-svrg``      :mod:`~lmft.finetune.methods.mezo_svrg`: zeroth-order, MeZO with SVRG's full-set anchors
``linear-probe``   :mod:`~lmft.finetune.methods.linear_probe`: logistic regression on frozen features
``zeroshot``       :mod:`~lmft.finetune.methods.zeroshot`: the prompt or causal head as it is
``icl``            :mod:`~lmft.finetune.methods.icl`: in-context demonstrations from the k-shot train set
=================  ==============================================================================

A type is a :class:`MethodType` (:mod:`lmft.finetune.methods.base`): its settings with their defaults,
its run, how it prepares the classifier. A type of one's own is one module that defines
``METHOD = MethodType(...)``, named in the config's ``finetune.plugins``
(:func:`load_plugins`; README, "Extending").
"""

from lmft.finetune.methods import ft, fzoo, icl, linear_probe, mezo, mezo_svrg, zeroshot
from lmft.finetune.methods.base import GenerationJob, GenerationOutcome, Job, MethodType, Outcome
from lmft.finetune.methods.registry import TYPES, check_values, get_type, job_spec, load_plugins, register, resolve_spec

for _module in (zeroshot, icl, linear_probe, ft, mezo, fzoo, mezo_svrg):  # the tables' row order (lmft.aggregate.summary)
    register(_module.METHOD)
BUILTIN = tuple(TYPES)

__all__ = ["BUILTIN", "TYPES", "GenerationJob", "GenerationOutcome", "Job", "MethodType", "Outcome", "check_values", "get_type", "job_spec",
           "load_plugins", "register", "resolve_spec"]
