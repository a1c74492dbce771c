"""Network Implosion: depth pruning by erasing whole residual units (Ida & Fujiwara, 2019).

Each erasable unit (identity shortcut) gets a learnable scalar gate ``w`` (its priority):
``relu(x + w * F(x))``. The lowest-priority units are erased (branch deleted, shortcut kept),
the net is retrained, and the step is kept only if validation accuracy holds. Works with the
zoo models and with any model whose blocks subclass ``resprune.models.ResidualUnit`` (see
:mod:`resprune.implosion.gates` for the protocol).

With your own training loop::

    import resprune
    from resprune.implosion import add_gates, erase_units, fold_gates, score_units

    net = resprune.load("runs/resnet56")        # a trained model
    add_gates(net)                              # w = 1 everywhere: logits unchanged
    my_train(net, epochs=5, lr=0.01)            # gates learn; weight decay shrinks the idle ones
    prio = score_units(net, "gate")             # {"layer1.0": 0.93, ...}; or "norm" + loader
    erase_units(net, sorted(prio, key=prio.get)[:2])   # drop the two lowest-priority units
    my_train(net, epochs=10, lr=0.01)           # retrain; check accuracy on your val split
    fold_gates(net)                             # gates into the BNs: no extra op at inference
    resprune.save(net, "runs/resnet56-imploded")

Or the whole loop: ``implode(net, train_loader, val_loader, ImplosionConfig(), "runs/x")``;
or the run directory ``resprune implode`` writes (summary, report) around it:
``run_implosion(net, data, ImplosionConfig(), out="runs/x")``.
"""

from .config import ERASE_MODES, ImplosionConfig
from .erase import erase_units
from .gates import add_gates, erasable_units, fold_gates, gates, residual_units
from .loop import ImplosionResult, implode
from .run import run_implosion
from .scores import SCORE_METHODS, score_units

__all__ = [
    "ERASE_MODES", "SCORE_METHODS", "ImplosionConfig", "ImplosionResult", "add_gates",
    "erasable_units", "erase_units", "fold_gates", "gates", "implode", "residual_units",
    "run_implosion", "score_units",
]
