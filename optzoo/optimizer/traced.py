"""A step whose tensor arithmetic ``torch.compile`` traces: the path Inductor can fuse (on CUDA, a few kernels).

The eager fast paths round every per-step scalar in Python, as MXNet does (``f32(lr * sqrt(1 - beta2^t) /
(1 - beta1^t))``...). Traced as they are, those Python numbers would become constants of the graph, and every new
learning rate or update count a new graph. :class:`TracedStep` splits a step in two (``Optimizer._foreach_parts``):

* the bookkeeping, eager and in Python: update counts, learning rates and multipliers, and the per-step scalars
  the rule names in ``_step_scalars`` (MXNet's rounding exactly as the eager path);
* the tensor arithmetic (``sgd_foreach``, ``adam_foreach``...), compiled once, taking those scalars as float32
  tensors: one 0-d tensor when every parameter shares it (the usual case), a vector otherwise. Hyperparameters
  (momentum, betas, epsilon, weight decay) stay constants of the graph: changing one compiles again, as for
  torch's own compiled optimizers.

The rules split so are the element-wise ones: SGD, NAG, Adam, AdamW, AdaBelief, Adamax, Nadam (its per-update
momentum schedule as per-tensor factors), RMSProp (plain and centered) and Lion; the others keep one opaque step
(the ``optzoo::optimizer_step`` operator of :mod:`optzoo.compiled`). Inductor fuses the arithmetic its own way,
and a traced Nadam multiplies by reciprocals where the eager step divides (as the native kernel does), so a traced
step agrees with the eager one to rounding (a few float32 ulps), not bit for bit. Speed on the CPU: docs/native.md,
"Traced steps".

Many tensors: Inductor's compile time grows faster than the number of tensors in one graph (its scheduler weighs
fusions pair by pair: ~0.2 s a tensor at 100-300 tensors; 2,000 did not compile in 3.5 minutes). A step over more
than ``chunk_above`` tensors (:data:`CHUNK_ABOVE`) runs chunked instead:

* every tensor seen as 1-D over its memory (contiguous or channels-last; the weight and its states alike), the
  tensors ordered smallest first and cut into chunks of ``chunk_size`` (:data:`CHUNK_SIZE`), the last chunk filled
  up with zero tensors of two values that the step keeps for the purpose;
* the arithmetic compiled once with dynamic sizes (``dynamic=True``, duck shapes off so that sizes equal in the
  chunk it compiles on are not assumed equal elsewhere) serves every chunk: one graph per dtype, two when some
  tensors are large enough for Inductor to split their loops among threads (threads x ``cpp.min_chunk_size``
  values), since a graph decides that once;
* the per-step scalars are float32 vectors, one per chunk, taken in the chunk's order (the weight decays too when
  they differ between tensors; equal, they stay constants of the graph);
* tensors of 0 or 1 value (Dynamo specializes those sizes: they would compile graphs of their own) and tensors that
  cannot be seen as 1-D in place (transposed, sliced) run the same arithmetic eagerly;
* all of that but the gradients and the scalars' values is kept across steps (``_ChunkPlan``: the 1-D aliases, the
  groups, the chunks' members and padding, the scalar vectors' tensors), while the same weight and state objects
  come and the ones seen through aliases still lie in the same memory (data pointers, shapes, strides: a weight
  given new data, reshaped or transposed in place gets a new plan, never a stale alias);
* the chunk calls build Dynamo's size guards in C++ on the CPU (``enable_cpp_symbolic_shape_guards``, for these
  calls only);
* the large tensors' group runs its split-loop graph or the small tensors' one-thread graph, whichever its timing
  says is faster (``_SplitChoice``: both timed at the first steps and again now and then; the same results either
  way): the split loops' barriers win on a quiet machine and cost seconds a step when other processes hold the
  cores. What is left per step is Dynamo's own per-call Python (~3 us a tensor: the guards, one ``call_size``
  per tensor, the AOT and Inductor wrappers), the rule's bookkeeping and the input checks (docs/native.md).

Example::

    opt = optzoo.optimizer.create("adam", learning_rate=1e-3, impl="foreach")
    step = TracedStep(opt)
    step.update(indices, weights, grads, states)  # as opt.update
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import time

import torch
import torch.fx.experimental._config

from .base import _SHAPE, Optimizer, _leaves

__all__ = ["TracedStep", "supports_tracing"]


def supports_tracing(optimizer: Optimizer) -> bool:
    """Whether ``optimizer``'s rule splits into Python scalars and traceable tensor arithmetic."""
    return bool(optimizer._step_scalars) and type(optimizer)._foreach_parts is not Optimizer._foreach_parts


def _as_tensor(values, device, vector: bool) -> torch.Tensor:
    """Per-tensor scalars as float32 on ``device`` (rounded once to nearest, as :func:`~optzoo.optimizer.base.f32`
    rounds): a vector if ``vector`` or if they differ, else one 0-d tensor."""
    values = list(values)
    if not vector and values.count(values[0]) == len(values):
        values = values[0]
    return torch.tensor(values, dtype=torch.float32, device=device)


#: Inductor settings of a traced step's graph (``torch.compile(options=...)``: for this graph only; a user's
#: ``options`` override them). ``size_asserts``: the generated wrapper re-asserts every input's sizes and strides
#: (three per tensor, ~0.4 us each), which Dynamo's guards have checked already. ``cpp.min_chunk_size``: a tensor
#: whose loop gives each thread fewer values than this runs on one thread; Inductor's 512 splits ResNet's 1,024-
#: and 2,048-value vectors too, each split ending in a barrier that costs more than the loop.
INDUCTOR_OPTIONS = {"size_asserts": False, "cpp.min_chunk_size": 2048}


def _smallest_first(weights) -> list[int]:
    """The entries ordered by size, smallest first. Inductor's CPU kernel opens its OpenMP region at the first loop
    worth splitting among threads; a one-thread loop after that runs as ``omp single``, whose implicit barrier
    costs more than a small loop. Smallest first, every one-thread loop runs before the region (no barrier) and
    the region holds only the split loops (one barrier each)."""
    return sorted(range(len(weights)), key=[w.numel() for w in weights].__getitem__)


def _taker(indices: list[int]):
    """A function returning the entries ``indices`` (one or more) of a list, as a list (``operator.itemgetter``'s
    speed)."""
    if len(indices) == 1:
        index = indices[0]
        return lambda value: [value[index]]
    get = operator.itemgetter(*indices)
    return lambda value: list(get(value))


def _per_tensor(value, take, n: int):
    """``take(value)`` when ``value`` is a per-tensor list of ``n`` entries (tensors, states, scalars), else
    ``value`` as it is (a rule hands its per-tensor values over as lists; a hyperparameter tuple such as ``betas``
    is never taken apart)."""
    return take(value) if type(value) is list and len(value) == n else value


#: a step over more tensors than this runs chunked (``TracedStep(chunk_above=...)``; None: never). One graph compiles
#: slower but steps faster: 300 tensors of 1 to 2M values (bench ``random``, quiet) compiled in 34-90 s (SGD, Lion,
#: Nadam; torch's own compiled Nadam 131 s) and stepped Nadam in 28.4 ms against 31.6 chunked (Dynamo's per-call
#: Python over ten chunk calls), Lion 22.6 against 25.4: ResNet-101's 314 and BERT-large's 391 tensors stay whole
CHUNK_ABOVE = 400
#: tensors per chunk of a chunked step (``TracedStep(chunk_size=...)``)
CHUNK_SIZE = 32
#: values of each padding tensor of a short chunk (Dynamo specializes sizes 0 and 1)
_PAD_NUMEL = 2
_CHANNELS_LAST = {4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}


def _flat_view(tensor: torch.Tensor, perm) -> torch.Tensor | None:
    """``tensor``'s values as a 1-D tensor over its memory in the order of ``perm`` (None: as laid out when
    contiguous), or None when they are not laid out so. Not a view in autograd's sense (``Tensor.set_`` on the same
    storage): Dynamo guards on a view's base too, and views of 1-D and of 2-D tensors would need two graphs."""
    t = tensor if perm is None else tensor.permute(perm)
    if not t.is_contiguous():
        return None
    if t.dim() == 1 and t._base is None:
        return t  # already so (a parameter of a 1-D shape): no new tensor each step
    return _alias(t)


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over the memory of the contiguous ``t``, sharing its storage."""
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


def _map_state(state, fn):
    """``state`` (a tensor, None, or a tuple or NamedTuple of them) with ``fn`` applied to each tensor; None when
    ``fn`` returns None for one."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    parts = [_map_state(part, fn) for part in state]
    if all(p is q for p, q in zip(parts, state)):
        return state
    if any(p is None and q is not None for p, q in zip(parts, state)):
        return None
    return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)


#: the perm of a 1-D weight (and states) taken as it is, its gradient too when 1-D in its own memory
_AS_IS = "as is"


def _flattened_pair(weight, state):
    """``(weight, state, perm)``: the weight and its state as 1-D tensors over their memory (updated in place
    through them) and how its gradient is to be seen (:func:`_flat_grad`); None when the weight or a state cannot
    be seen so (neither contiguous nor channels-last like its weight)."""
    if weight.dim() == 1 and weight._base is None and weight.is_contiguous():  # the usual 1-D parameter: as it is
        s = _map_state(state, lambda t: t if t.shape == weight.shape and t._base is None and t.is_contiguous()
                       else None)
        if s is not None or state is None:
            return weight, s, _AS_IS
    perm = None
    if not weight.is_contiguous():
        perm = _CHANNELS_LAST.get(weight.dim())
        if perm is None or not weight.permute(perm).is_contiguous():
            return None
    w = _flat_view(weight, perm)
    s = _map_state(state, lambda t: _flat_view(t, perm) if t.shape == weight.shape else None)
    if state is not None and s is None:
        return None
    return w, s, perm


def _flat_grad(grad, perm):
    """The gradient of a weight flattened with ``perm`` (:func:`_flattened_pair`; ``_AS_IS`` counts as None) as a
    1-D tensor in the same order: over its memory when laid out so, else a copy (it is only read)."""
    perm = None if perm is _AS_IS else perm
    g = _flat_view(grad, perm)
    return g if g is not None else (grad if perm is None else grad.permute(perm)).reshape(-1)


def _layout(entry):
    """What a padding entry must match: the structure, dtypes and devices of ``entry``."""
    if entry is None or isinstance(entry, torch.Tensor):
        return None if entry is None else (entry.dtype, entry.device)
    return type(entry), tuple(_layout(part) for part in entry)


def _zeros_like_entry(entry):
    """A padding entry shaped as ``entry``: zeros of ``_PAD_NUMEL`` values (every rule keeps them finite)."""
    return _map_state(entry, lambda t: torch.zeros(_PAD_NUMEL, dtype=t.dtype, device=t.device))


def _padded_indices(chunk: list[int], size: int) -> list[int]:
    """``chunk`` filled up to ``size`` with its last entry (the padding's per-tensor scalars)."""
    return chunk + [chunk[-1]] * (size - len(chunk))


def _chunk_settings(device: torch.device):
    """Dynamo's settings for a chunk's graph: tensors of equal size are not assumed equal in size (with duck shapes,
    two chunks' tensors that differ where the first chunk's were equal would compile again); on the CPU (where
    Inductor compiles C++ anyway) the guards on the sizes run in C++ (Dynamo's default evaluates them in Python,
    three ``Tensor.size`` calls a tensor a call)."""
    import torch._dynamo  # imported by torch.compile's first call

    stack = contextlib.ExitStack()
    stack.enter_context(torch.fx.experimental._config.patch(use_duck_shape=False))
    if device.type == "cpu":
        stack.enter_context(torch._dynamo.config.patch(enable_cpp_symbolic_shape_guards=True))
    return stack


class TracedStep:
    """:meth:`update` is ``optimizer.update`` with the rule's tensor arithmetic compiled by ``torch.compile``
    (``compile_options`` are passed to it; its ``options`` start from :data:`INDUCTOR_OPTIONS` unless a ``mode`` is
    given). Dense gradients only, no ``multi_precision`` master copies. A step over more than ``chunk_above`` tensors
    (None: never) runs chunked, ``chunk_size`` tensors a chunk (the module's docstring, "Many tensors")."""

    def __init__(self, optimizer: Optimizer, *, chunk_size: int = CHUNK_SIZE, chunk_above: int | None = CHUNK_ABOVE,
                 **compile_options):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"TracedStep expects an optzoo optimizer, got {type(optimizer).__name__}")
        if not supports_tracing(optimizer):
            raise ValueError(f"{type(optimizer).__name__} has no traceable foreach arithmetic; traced steps exist "
                             "for SGD, NAG, Adam, AdamW, AdaBelief, Adamax, Nadam, RMSProp and Lion")
        if type(chunk_size) is not int or chunk_size < 1:
            raise ValueError(f"TracedStep: chunk_size must be an int >= 1, got {chunk_size!r}")
        if chunk_above is not None and (type(chunk_above) is not int or chunk_above < 0):
            raise ValueError(f"TracedStep: chunk_above must be None or an int >= 0, got {chunk_above!r}")
        self.optimizer = optimizer
        self.chunk_size, self.chunk_above = chunk_size, chunk_above
        if "mode" not in compile_options:  # torch.compile takes a mode or options, not both
            compile_options["options"] = {**INDUCTOR_OPTIONS, **(compile_options.get("options") or {})}
        self._compile_options = compile_options
        self._compiled: dict = {}  # (arithmetic function, chunked) -> its compiled form
        # the scalars once handed over as vectors stay vectors when their values happen to coincide (Nadam's
        # 1 - m_schedule all reach 1.0), so that the graph compiled for vectors is not compiled again for 0-d
        self._vectors: set[str] = set()
        # the last step's weights (their ids), _smallest_first's order and its taker: the same weights come every
        # step. A stale order (a weight of that id reshaped since) is a valid order all the same:
        # every list is reordered alike and the arithmetic is per tensor; only the thread barriers may cost more.
        self._order_for: tuple = ()
        self._order: tuple = ([], None)
        self._pads: dict = {}  # (argument, missing, layout) -> the padding entries of a short chunk (kept)
        self._plan: _ChunkPlan | None = None  # the chunked step's, kept while the same weights and states come
        self._split_choices: dict = {}  # (arithmetic, device, dtype) -> its split group's _SplitChoice

    def _compiled_fn(self, fn, chunked: bool, split: bool = False):
        """``fn`` compiled: for the one-graph step, or (``chunked``) with dynamic sizes for the chunks, one compiled
        form for the chunks whose loops ``split`` among threads and one for the others (a chunk graph decides
        once, from the sizes it is compiled on, which loops it splits)."""
        key = (fn, chunked, split)
        compiled = self._compiled.get(key)
        if compiled is None:
            options = self._compile_options
            if chunked:
                options = dict(options, dynamic=True)
                if "options" in options:  # not with a mode; explicit, as the hints are only the first chunk's
                    options["options"] = {**options["options"], "cpp.min_chunk_size": 1 if split else 1 << 40}
            compiled = self._compiled[key] = torch.compile(fn, **options)
        return compiled

    def _split_from(self, device: torch.device) -> int:
        """The least size whose loop Inductor splits among threads on ``device`` (``cpp.min_chunk_size`` values a
        thread); a chunk graph is compiled for the tensors below it or for those at or above it, not both."""
        if device.type != "cpu" or "options" not in self._compile_options:
            return 1 << 62
        from torch._inductor import config  # imported by the first compile

        options = self._compile_options.get("options") or {}
        return torch.get_num_threads() * options.get("cpp.min_chunk_size", config.cpp.min_chunk_size)

    def update(self, indices, weights, grads, states) -> None:
        """Updates ``weights`` and ``states`` in place, as ``optimizer.update(indices, weights, grads, states)``."""
        opt = self.optimizer
        if not isinstance(indices, (list, tuple)):
            indices, weights, grads, states = [indices], [weights], [grads], [states]
        indices, weights, grads, states = list(indices), list(weights), list(grads), list(states)
        # as optimizer.update, the states stepped as given (no master copies unwrapped)
        if not opt._check_inputs(indices, weights, grads, states, masters=False):  # the usual case has neither
            if any(g.is_sparse for g in grads):
                raise ValueError("TracedStep takes dense gradients only; pass grad.to_dense() or use optimizer.update")
            if len(set(map(id, weights))) != len(weights):
                raise ValueError("TracedStep: a weight is listed twice; use optimizer.update, which updates it twice")
        if not weights:
            return
        opt._update_count(indices)
        lrs, wds = opt._get_lrs(indices), opt._get_wds(indices)
        ts = [opt._index_update_count[i] for i in indices]
        if self.chunk_above is not None and len(weights) > self.chunk_above:
            self._chunked_update(weights, grads, states, lrs, wds, ts)
            return
        fn, args, kwargs = opt._foreach_parts(weights, grads, states, lrs, wds, ts)
        # the bookkeeping ran in update order (Nadam's shared schedule depends on it); the arithmetic is per tensor,
        # so the graph takes the tensors smallest first (see _smallest_first)
        ids = tuple(map(id, weights))
        if ids != self._order_for:
            order = _smallest_first(weights)
            self._order_for, self._order = ids, (order, _taker(order))
        n, take = len(weights), self._order[1]
        args = tuple(_per_tensor(arg, take, n) for arg in args)
        kwargs = {name: _per_tensor(value, take, n) for name, value in kwargs.items()}
        for name in opt._step_scalars:
            kwargs[name] = _as_tensor(kwargs[name], weights[0].device, name in self._vectors)
            if kwargs[name].dim():
                self._vectors.add(name)
        with torch.no_grad():
            self._compiled_fn(fn, False)(*args, **kwargs)

    def _chunked_update(self, weights, grads, states, lrs, wds, ts) -> None:
        """The step over many tensors: the arithmetic compiled once with dynamic sizes, run on chunks of
        ``chunk_size`` flattened tensors (see the module's docstring, "Many tensors")."""
        opt, n = self.optimizer, len(weights)
        plan = self._plan_for(weights, states)
        fn, args, kwargs = opt._foreach_parts(plan.weights, plan.flat_grads(grads), plan.states, lrs, wds, ts)
        # every per-step scalar a vector (0-d ones would compile again once they differ between tensors); the
        # decays too when they differ, else constants of the graph as in the one-graph step
        scalars = list(opt._step_scalars)
        if type(kwargs.get("wds")) is list and kwargs["wds"].count(kwargs["wds"][0]) != n:
            scalars.append("wds")
        lists = [k for k, arg in enumerate(args) if type(arg) is list and len(arg) == n]
        others = {name: value for name, value in kwargs.items() if name not in scalars}
        lists_kw = [name for name, value in others.items() if type(value) is list and len(value) == n]
        with torch.no_grad():
            if plan.eager:
                take = _taker(plan.eager)
                fn(*(_per_tensor(arg, take, n) for arg in args),
                   **{name: _per_tensor(value, take, n) for name, value in kwargs.items()})
            for group in plan.groups:
                split, choice = group.split, None
                if split:  # the chunks of large tensors: their loops split among threads, or on one thread each
                    choice = self._split_choices.setdefault((fn, group.device, group.dtype), _SplitChoice())
                    split, start = choice.pick(), time.perf_counter()
                compiled = self._compiled_fn(fn, True, split)
                vectors = {name: group.vectors(name, kwargs[name]) for name in scalars}
                cargs, ckwargs = list(args), dict(others)
                with _chunk_settings(group.device):
                    for c, (take, missing) in enumerate(group.chunks):
                        for k in lists:
                            cargs[k] = self._chunk_of(args[k], take, missing, ("arg", k))
                        for name in lists_kw:
                            ckwargs[name] = self._chunk_of(others[name], take, missing, ("kw", name))
                        for name in scalars:
                            ckwargs[name] = vectors[name][c]
                        compiled(*cargs, **ckwargs)
                if choice is not None:
                    choice.record(split, time.perf_counter() - start)
            # the chunks wrote through 1-D aliases (Tensor.set_), which autograd's version counters do not see: the
            # weights and states count as modified in place, as after any optimizer step (the ones taken as they are
            # were, by the compiled graph)
            torch._C._increment_version(plan.aliased)

    def _plan_for(self, weights, states) -> _ChunkPlan:
        """The chunk plan of these weights and states: the last step's while they are the same tensors over the
        same memory (:meth:`_ChunkPlan.fits`), else a new one."""
        plan = self._plan
        if plan is None or not plan.fits(weights, states):
            plan = self._plan = None  # the old aliases go before the new ones are made
            plan = self._plan = _ChunkPlan(weights, states, self.chunk_size, self._split_from)
        return plan

    def _chunk_of(self, value, take, missing: int, where):
        """The entries ``take`` of a per-tensor list ``value``, padded with ``missing`` entries to ``chunk_size``."""
        taken = take(value)
        if missing:
            template = taken[-1]
            if template is None or isinstance(template, (int, float)):
                return taken + [template] * missing
            key = (where, missing, _layout(template))
            pads = self._pads.get(key)
            if pads is None:
                pads = self._pads[key] = [_zeros_like_entry(template) for _ in range(missing)]
            return taken + pads
        return taken


_DATA_PTR, _STRIDE, _IS_CONTIGUOUS = torch.Tensor.data_ptr, torch.Tensor.stride, torch.Tensor.is_contiguous
_BASE = operator.attrgetter("_base")


def _memory_of(tensors) -> tuple:
    """What a 1-D alias of each of ``tensors`` depends on: its data pointer, shape and strides (three C-level
    passes over the list)."""
    return list(map(_DATA_PTR, tensors)), list(map(_SHAPE, tensors)), list(map(_STRIDE, tensors))


#: a group of tensors large enough to split their loops among threads is timed both ways every this many steps at
#: least (more where the slower way is much slower: the retiming costs at most ~2% of the steps' time)
RETIME_EVERY = 64


class _SplitChoice:
    """Which graph a group of large tensors runs: the one that splits each tensor's loop among the threads (one
    barrier a tensor) or the one-thread graph of the small tensors (no barrier, one core's bandwidth). Each is
    timed twice (wall clock, interleaved, after a first untimed call that may compile; the faster of the two kept),
    then the faster one runs; both are timed again after :data:`RETIME_EVERY` steps (a burst of load during the
    first timings is not kept long), then every 50 x (slower / faster) steps when that is more. On a quiet machine
    the split loops win; when other processes hold the cores, every barrier waits for a descheduled thread
    (docs/native.md) and one thread wins by far. Both graphs compute each value alike: the choice changes the time,
    not the result. Where no tensor is small, the one-thread graph is compiled at its first try (the compile time
    of a second chunk graph)."""

    def __init__(self):
        self.times: dict[bool, float | None] = {True: None, False: None}
        self._warm: set[bool] = set()
        self._first = [True, False, True, False]  # the first timings, interleaved (each keeps its fastest)
        self._steps = 0  # steps since both were timed
        self._every = RETIME_EVERY
        self._checked = False  # whether both were timed again once (the first interval is RETIME_EVERY)

    def pick(self) -> bool:
        """True: split the loops among threads; False: one thread a loop."""
        for split in (True, False):
            if split not in self._warm:
                return split
        if self._first:
            return self._first[0]
        if self._steps >= self._every:
            return self._steps == self._every  # the split graph, then the one-thread graph, timed again
        return self.times[True] <= self.times[False]

    def record(self, split: bool, seconds: float) -> None:
        if split not in self._warm:
            self._warm.add(split)  # its first call may have compiled
            return
        if self._first:
            del self._first[0]
            seconds = min(seconds, self.times[split] or seconds)
        elif self._steps > self._every:  # the second of a retiming
            self._steps, self._checked = 0, True
        else:
            self._steps += 1
        self.times[split] = seconds
        if self._checked:
            fast, slow = sorted(self.times.values())
            self._every = max(RETIME_EVERY, math.ceil(50 * slow / max(fast, 1e-9)))


class _ChunkGroup:
    """The tensors of one (device, dtype, loops-split) group, smallest first, cut into chunks: per chunk a taker
    of its entries and the number of padding entries; the per-step scalar vectors kept per argument name."""

    def __init__(self, device, dtype, split: bool, members: list[int], size: int):
        self.device, self.dtype, self.split = device, dtype, split
        chunks = [members[k:k + size] for k in range(0, len(members), size)]
        self.chunks = [(_taker(chunk), size - len(chunk)) for chunk in chunks]
        self._scalar_taker = _taker([i for chunk in chunks for i in _padded_indices(chunk, size)])
        self._size = size
        self._vectors: dict = {}  # argument name -> (one float32 tensor, its chunks as 1-D tensors over it)

    def vectors(self, name: str, values: list) -> list:
        """The per-tensor scalars ``values`` as float32 vectors, one per chunk in the chunk's order (padding entries
        repeat their chunk's last scalar): written into tensors kept across steps, one storage per name, each
        chunk's a 1-D tensor of its own over it (not a view: Dynamo would guard on the base)."""
        fresh = torch.tensor(self._scalar_taker(values), dtype=torch.float32, device=self.device)
        kept = self._vectors.get(name)
        if kept is None:
            kept = self._vectors[name] = (fresh, [_alias(v) for v in fresh.split(self._size)])
        else:
            kept[0].copy_(fresh)
        return kept[1]


class _ChunkPlan:
    """What a chunked step keeps while the same weights and states come: their 1-D aliases, which tensors take
    the eager arithmetic, the chunk groups, and the tensors seen through aliases. Grads are new each step
    (:meth:`flat_grads`). Holds the weights and states (and their aliases their storages) until a step with other
    ones: their ids and data pointers cannot be taken by other tensors meanwhile."""

    def __init__(self, weights, states, size: int, split_from):
        n = len(weights)
        self._weights, self._states, self._shapes = list(weights), list(states), list(map(_SHAPE, weights))
        self.weights, self.states, self._perms = list(weights), list(states), [False] * n
        for i, (w, s) in enumerate(zip(weights, states)):
            flat = _flattened_pair(w, s)
            if flat is not None and w.numel() >= 2:
                self.weights[i], self.states[i], self._perms[i] = flat
        # sizes 0 and 1 are specialized by Dynamo (a graph of their own); they, and the tensors that cannot be
        # flattened in place, take the eager arithmetic
        self.eager = [i for i in range(n) if self._perms[i] is False]
        self._as_is = [p is _AS_IS for p in self._perms]
        self._others = [i for i in range(n) if self._perms[i] is not False and self._perms[i] is not _AS_IS]
        groups: dict = {}  # (device, dtype, split among threads) -> the tensors, smallest first
        starts = {device: split_from(device) for device in {w.device for w in weights}}
        for i in sorted((i for i in range(n) if self._perms[i] is not False), key=lambda i: weights[i].numel()):
            w = weights[i]
            groups.setdefault((w.device, w.dtype, w.numel() >= starts[w.device]), []).append(i)
        self.groups = [_ChunkGroup(*key, members, size) for key, members in groups.items()]
        # the weights and states seen through aliases of their memory (what those aliases depend on)
        self.aliased = [t for i in self._others for t in (weights[i], *_leaves(states[i]))]
        self._memory = _memory_of(self.aliased)

    def fits(self, weights, states) -> bool:
        """Whether ``weights`` and ``states`` are this plan's (the same objects, the weights of the same shapes) and
        the ones seen through 1-D aliases still over the same memory (data pointers, shapes and strides): a weight
        given new data (``w.data = ...``, ``w.set_()``, a reshape or transpose in place) or a new state makes a new
        plan, so that no step writes through a stale alias. The weights and states taken as they are (1-D ones)
        need no more: a step reads them as they are then."""
        if len(weights) != len(self._weights) or not all(map(operator.is_, weights, self._weights)):
            return False
        if not all(map(operator.is_, states, self._states)) or list(map(_SHAPE, weights)) != self._shapes:
            return False
        return _memory_of(self.aliased) == self._memory

    def flat_grads(self, grads) -> list:
        """``grads`` seen as the weights are (1-D, in the weights' memory order): a 1-D gradient as it is, others
        as 1-D tensors over their memory (or copied, when not laid out as their weight); the eager ones as they
        are."""
        flat = list(grads)
        bases, contiguous = list(map(_BASE, grads)), list(map(_IS_CONTIGUOUS, grads))
        if bases.count(None) != len(bases) or not all(contiguous):
            for i in itertools.compress(range(len(flat)), self._as_is):
                if bases[i] is not None or not contiguous[i]:  # a view (of a bucket) or strided: 1-D of its own
                    flat[i] = _flat_grad(grads[i], None)
        for i in self._others:
            flat[i] = _flat_grad(grads[i], self._perms[i])
        return flat
