"""Layer-wise relevance propagation (Bach et al. 2015; LSTM-LRP, Arras et al. 2017) at the embedding layer."""
from __future__ import annotations

import torch

from .base import Attribution, Explainer, Prepared, embed, forward_at_embeddings, reduce_dims, resolve_target
from .deeplift import warn_unruled
from .hyperparameters import Hyper
from .propagation import LRP_RULES, LrpRules, lrp_relevance

RULE_HELP = "rule of the conv layers (linear layers and recurrent cells: epsilon)"
EPSILON_HELP = "epsilon stabiliser of the epsilon rule (default 0.001; larger: fewer, stronger relevances)"
GAMMA_HELP = "gamma rule: weight of the positive contributions (default 0.25)"
ALPHA_HELP = "alpha-beta rule: alpha (beta = alpha - 1; default 1: positive contributions only)"


class LRP(Explainer, name="lrp", title="LRP"):
    """LRP of the target logit down to the token embeddings (``textexplain.propagation.LrpRules``).

    ``rule`` applies to conv layers (the text CNN's): ``"epsilon"`` (default), ``"gamma"`` or
    ``"alpha_beta"``; linear layers and the linear parts of LSTM/GRU cells take the epsilon rule,
    activations pass relevance on, max pooling and max over time give it to the winner, mean pooling
    shares it. LSTM/GRU cells (unrolled here) follow LSTM-LRP: in every product of a gate and a signal
    the signal takes all the relevance (the GRU: ``h' = (1 - z) n + z h`` gives ``n`` and ``h`` their
    terms' shares, ``r (W_hn h + b_hn)`` gives all to ``W_hn h + b_hn``). Score per token = sum over
    embedding dims of ``x * g``. Relevance is conserved up to what biases and epsilon absorb:
    ``info["bias_relevance"]`` is what the biases took, ``delta = sum(scores) - F(x)`` the total gap,
    ``info["epsilon_residual"] = F(x) - sum(scores) - bias_relevance`` the epsilon stabilisers' share.
    """

    rule = Hyper(str, "epsilon", choices=LRP_RULES, help=RULE_HELP)
    epsilon = Hyper(float, 1e-3, ge=0, le=10, help=EPSILON_HELP)
    gamma = Hyper(float, 0.25, ge=0, le=100, help=GAMMA_HELP)
    alpha = Hyper(float, 1.0, ge=1, le=10, help=ALPHA_HELP)

    def _attribute(self, prepared: Prepared, target) -> Attribution:
        ids = prepared.ids
        x = embed(self.model, ids)
        with torch.no_grad():
            logits = forward_at_embeddings(self.model, ids, x)[0].double().numpy()
        target = resolve_target(self.model, target, logits)
        rules = LrpRules(self.rule, self.epsilon, self.gamma, self.alpha)
        relevance, out, bias = lrp_relevance(
            lambda rows: forward_at_embeddings(self.model, ids, rows)[:, target], x, rules)
        warn_unruled(type(self).__name__, rules)
        scores = reduce_dims(relevance[0], "sum")
        f_input = float(out[0])
        return Attribution(scores, logits, target, delta=float(scores.sum() - f_input),
                           info={"f_input": f_input, "bias_relevance": float(bias[0]),
                                 "epsilon_residual": float(f_input - scores.sum() - bias[0]),
                                 "rules_applied": rules.rewritten})
