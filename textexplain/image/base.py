"""Shared machinery for the image methods: the method base class, the registry, input and target
checks, layer lookup, and hook context managers that always remove what they install.

Thread safety: nothing here changes global state. Forward hooks act only for the thread that
installed them (a concurrent call on the same model in another thread passes straight through),
and the ReLU rules of guided backprop live in a thread-local ``TorchFunctionMode`` (guided.py).
Gradients are taken with ``torch.autograd.grad`` with respect to inputs or captured activations
only, so parameters' ``.grad``, ``requires_grad`` and the ``training`` flag are never touched.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Callable, ClassVar, ContextManager, Union

import numpy as np
import torch
from torch import nn

from ..hyperparameters import Method, register_method

TargetSpec = Union[None, int, Sequence[int], np.ndarray, torch.Tensor]
LayerSpec = Union[None, str, nn.Module]

METHODS: dict[str, type["ImageMethod"]] = {}
BATCH_HELP = "inputs per forward/backward pass (bounds memory)"


def register(name: str) -> Callable[[type], type]:
    """Class decorator: list an attribution method in ``METHODS`` under ``name`` -- the same registration
    as declaring the class with ``name=...`` (``textexplain.hyperparameters.register_method``)."""

    def wrap(cls: type) -> type:
        return register_method(cls, name)

    return wrap


# ----------------------------------------------------------------------------- checks


def check_images(x: Any) -> torch.Tensor:
    """Return ``x`` as a detached float tensor of shape (B, C, H, W), or raise naming the fix."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy array of shape (B, C, H, W), "
                        f"got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"images must be a batch of shape (B, C, H, W), got shape {tuple(x.shape)}; "
                         "for one image use x[None], for grey (B, H, W) images use x[:, None]")
    if x.shape[0] == 0:
        raise ValueError("images is an empty batch")
    if not x.is_floating_point():
        raise TypeError(f"images must be floating point (e.g. float32 in [0, 1]), got {x.dtype}")
    return x.detach()


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model and check that it returns class scores of shape (B, n_classes)."""
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return class scores of shape (B, n_classes) for images (B, C, H, W); "
                         f"got {shape}. Wrap it in a module that returns the logits.")
    return out


def resolve_targets(target: TargetSpec, batch: int, n_classes: int | None = None,
                    logits: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a target spec into a long tensor (B,): None = argmax of ``logits``, int, or one per sample."""
    if target is None:
        if logits is None:
            raise ValueError("target=None needs the model's logits to pick the predicted class")
        return logits.detach().argmax(1)
    if isinstance(target, (bool, np.bool_)):
        raise TypeError("target must be a class index, not a bool")
    if isinstance(target, (int, np.integer)):
        out = torch.full((batch,), int(target), dtype=torch.long)
    else:
        try:
            out = torch.as_tensor(np.asarray(target), dtype=torch.long).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"target must be None, an int, or one int per image; got {target!r}") from exc
        if out.numel() != batch:
            raise ValueError(f"got {out.numel()} targets for {batch} images: give one target per image, "
                             "a single int, or None for the predicted class")
    if out.min() < 0:
        raise ValueError(f"targets must be class indices >= 0, got {out.tolist()}")
    if n_classes is not None and out.max() >= n_classes:
        raise ValueError(f"target {out.tolist()} out of range: the model has {n_classes} classes")
    return out


def predicted_or_given(model: nn.Module, x: torch.Tensor, target: TargetSpec) -> torch.Tensor:
    """Targets for ``x``: given ones as a tensor, or the predictions of one gradient-free forward pass."""
    if target is not None:
        return resolve_targets(target, x.shape[0]).to(x.device)
    with torch.no_grad():
        logits = logits_of(model, x)
    return resolve_targets(None, x.shape[0], logits.shape[1], logits).to(x.device)


def select(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The target logit of each sample, shape (B,); a target beyond the model's classes is refused."""
    n_classes = logits.shape[1]
    if targets.numel() and (targets.min() < 0 or targets.max() >= n_classes):
        raise ValueError(f"target {targets.tolist()} out of range: the model has {n_classes} classes")
    return logits.gather(1, targets.to(logits.device)[:, None])[:, 0]


_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def warn_if_training(model: nn.Module) -> None:
    """Warn when dropout or batch-norm layers run in training mode (the mode is never changed)."""
    if any(m.training and isinstance(m, _MODE_DEPENDENT) for m in model.modules()):
        warnings.warn("the model is in training mode: dropout and batch-norm make attributions random and "
                      "batch-dependent; call model.eval() first (textexplain.image never changes the mode)",
                      UserWarning, stacklevel=3)


def input_gradients(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, batch_size: int | None = None,
                    forward_context: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """d logit[target] / d x for every sample, in chunks of ``batch_size`` (one backward per chunk).

    Summing the selected logits before one backward is exact because samples do not interact in an
    eval-mode model; the user's ``x`` and the model's parameters are left untouched.
    ``forward_context`` wraps each forward pass (guided backprop's ReLU rules use it).
    """
    step = batch_size or x.shape[0]
    grads = []
    for s in range(0, x.shape[0], step):
        xi = x[s:s + step].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            with forward_context():
                logits = logits_of(model, xi)
            score = select(logits, targets[s:s + step]).sum()
            grads.append(torch.autograd.grad(score, xi)[0])
    return torch.cat(grads)


def pixel_map(attr: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) attributions summed over channels to (B, H, W); (B, H, W) passes through."""
    return attr.sum(1) if attr.dim() == 4 else attr


# ----------------------------------------------------------------------------- layers and hooks


def layer_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of the model")


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """A submodule given by dotted name (``"features.4"``) or by the module object itself."""
    if isinstance(layer, nn.Module):
        layer_name(model, layer)  # raises if foreign
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name like 'features.4' or an nn.Module, got {type(layer).__name__}")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"the model has no layer {layer!r}; layers are: {', '.join(names)}") from None


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` in module order: the classifier of a GAP -> linear head."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer: pass classifier= explicitly")
    return linears[-1]


class _Capture:
    """Outputs of one layer recorded during forward passes of the installing thread."""

    def __init__(self, module: nn.Module, clone: bool):
        self.module = module
        self.clone = clone
        self.outputs: list[torch.Tensor] = []
        self._thread = threading.get_ident()

    def hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != self._thread:
            return None
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer {type(module).__name__} returns {type(output).__name__}, "
                             "not a tensor: choose a layer whose output is a feature map")
        self.outputs.append(output)
        # Hand a clone downstream so later in-place ops (ReLU(inplace=True), `out += identity`)
        # cannot overwrite the captured activation or break gradients through it.
        return output.clone() if self.clone else None

    @property
    def output(self) -> torch.Tensor:
        if len(self.outputs) != 1:
            raise ValueError(f"layer {type(self.module).__name__} ran {len(self.outputs)} times in one forward "
                             "pass; choose a layer that runs exactly once (e.g. the block containing it)")
        return self.outputs[0]


@contextlib.contextmanager
def capture(module: nn.Module, clone: bool = True) -> Iterator[_Capture]:
    """Record ``module``'s output in this thread; the hook is removed on exit, also on error."""
    cap = _Capture(module, clone)
    handle = module.register_forward_hook(cap.hook)
    try:
        yield cap
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_input(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the first positional input of ``module`` (e.g. the features entering the classifier)."""
    seen: list[torch.Tensor] = []
    owner = threading.get_ident()

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        if threading.get_ident() == owner:
            seen.append(args[0])

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield seen
    finally:
        handle.remove()


def default_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the last module to finish with a spatial (B, C, H, W) output, H*W > 1.

    For ``features -> GAP -> fc`` this is ``features``; for a ResNet it is ``layer4``: the layer
    CAM methods conventionally use, found without assuming attribute names.
    """
    finished: list[tuple[str, torch.Tensor]] = []
    owner = threading.get_ident()
    handles = []

    def make_hook(name: str) -> Callable:
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if threading.get_ident() == owner:
                finished.append((name, output))
        return hook

    try:
        for name, mod in model.named_modules():
            if name:
                handles.append(mod.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            logits_of(model, x[:1])
    finally:
        for h in handles:
            h.remove()
    for name, out in reversed(finished):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
            return name
    raise ValueError("found no layer with a spatial (B, C, H, W) output: pass layer= explicitly")


# ----------------------------------------------------------------------------- base class


class Configurable:
    """A model plus hyperparameters: the constructor only stores them (scikit-learn style), so
    ``get_params``/``set_params``/``clone_for`` and ``describe`` work the same for every class."""

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        names = []
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ must not take *args/**kwargs")
            if p.name not in ("self", "model"):
                names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to the constructor (layers given as modules become names)."""
        params = {}
        for n in self._param_names():
            v = getattr(self, n)
            params[n] = layer_name(self.model, v) if isinstance(v, nn.Module) else v
        return params

    def set_params(self, **params: Any) -> "Configurable":
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {k!r}; parameters are {sorted(valid)}")
            setattr(self, k, v)
        return self

    def clone_for(self, model: nn.Module) -> "Configurable":
        """The same hyperparameters on another model (e.g. a randomized deep copy)."""
        return type(self)(model, **self.get_params())

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """JSON-ready description for a UI: name, class, default hyperparameters, first doc line."""
        sig = inspect.signature(cls.__init__)
        defaults = {n: sig.parameters[n].default for n in cls._param_names()
                    if sig.parameters[n].default is not inspect.Parameter.empty}
        doc = (cls.__doc__ or "").strip().splitlines()
        return {"name": cls.name, "class": cls.__name__, "params": defaults, "summary": doc[0] if doc else ""}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class ImageMethod(Method):
    """Base of every image attribution method: declared as ``class Mine(ImageMethod, name="mine",
    title="Mine")`` with ``Hyper`` class attributes (``textexplain.hyperparameters``); subclasses
    implement ``_attribute(x, targets)``."""

    registry = METHODS
    #: whether scores carry a sign (positive = evidence for the target) or are magnitudes
    signed: ClassVar[bool] = True
    #: "pixels": (B, C, H, W) per input value; "map": (B, H, W) per pixel location
    output: ClassVar[str] = "pixels"

    def _accept_model(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to the constructor (layers given as modules become names)."""
        params = {}
        for n in type(self).hyperparameters:
            v = getattr(self, n)
            params[n] = layer_name(self.model, v) if isinstance(v, nn.Module) else v
        return params

    def set_params(self, **params: Any) -> "ImageMethod":
        """Change hyperparameters, checked as the constructor checks them."""
        declared = type(self).hyperparameters
        for k, v in params.items():
            if k not in declared:
                raise ValueError(f"{type(self).__name__} has no parameter {k!r}; parameters are {sorted(declared)}")
            setattr(self, k, declared[k].validate(v))
        self._validate()
        return self

    def clone_for(self, model: nn.Module) -> "ImageMethod":
        """The same hyperparameters on another model (e.g. a randomized deep copy)."""
        return type(self)(model, **self.get_params())

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """JSON-ready description for a UI: name, title, class, defaults, declarations, output kind, signedness."""
        doc = (cls.__doc__ or "").strip().splitlines()
        signed = cls.signed if isinstance(cls.signed, bool) else None  # None: depends on the parameters
        return {"name": cls.name, "title": cls.title, "class": cls.__name__,
                "params": {k: h.default for k, h in cls.hyperparameters.items()},
                "hyperparameters": cls.describe_hyperparameters(), "summary": doc[0] if doc else "",
                "output": cls.output, "signed": signed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the work ----------------------------------------------------------------------------
    def attribute(self, x: torch.Tensor, target: TargetSpec = None) -> torch.Tensor:
        """Attributions for a batch ``x`` (B, C, H, W).

        ``target``: None explains each image's predicted class, an int the same class for all,
        a sequence one class per image. Returns (B, C, H, W) or (B, H, W) (see ``output``).
        """
        x = check_images(x)
        warn_if_training(self.model)
        targets = predicted_or_given(self.model, x, target)
        return self._attribute(x, targets).detach()

    def _attribute(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def attribute(model: nn.Module, x: torch.Tensor, method: str = "saliency", target: TargetSpec = None,
              **params: Any) -> torch.Tensor:
    """One-call form: ``attribute(model, x, "gradcam", layer="features")``."""
    if method not in METHODS:
        raise ValueError(f"unknown image method {method!r}; methods are {', '.join(sorted(METHODS))}")
    return METHODS[method](model, **params).attribute(x, target)
