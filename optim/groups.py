"""Which optimizer part owns which parameter, and which parameters decay: decided by module type, not model class."""

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, exclude: set[int] = frozenset()) -> list[dict]:
    """Matrices decay; norms, biases (ndim < 2) and embedding tables do not. A tied table counts once. Parameters
    whose id is in `exclude` are left out (another optimizer part owns them)."""
    no_decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() already skips shared (tied) tensors
        if not p.requires_grad or id(p) in exclude:
            continue
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _name_matches(name: str, entry: str) -> bool:
    """`entry` is the module's dotted name or a suffix of it made of whole components ("output" matches
    "module.output" under DDP)."""
    return name == entry or name.endswith("." + entry)


def muon_params(model: nn.Module, exclude: list[str]) -> list[nn.Parameter]:
    """The hidden 2-D matrices Muon owns: weights of nn.Linear modules, unless the module's name matches an entry
    of `exclude` or the weight is an embedding table (a tied head). Decided by module type, not by model class."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    used, found, seen = set(), [], set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        hits = [e for e in exclude if _name_matches(name, e)]
        used.update(hits)
        w = module.weight
        if hits or not w.requires_grad or w.ndim != 2 or id(w) in embedding_ids or id(w) in seen:
            continue
        seen.add(id(w))
        found.append(w)
    unknown = [e for e in exclude if e not in used]
    if unknown:
        raise ValueError(
            f"optim.muon_exclude names no nn.Linear module of the model: {unknown} (give module names such as "
            f"'output', as in model.named_modules())"
        )
    return found
