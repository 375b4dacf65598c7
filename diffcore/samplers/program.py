"""Samplers as coefficient programs, and the one loop that runs them.

A built-in sampler is a function of the plan alone (written with :mod:`diffcore.samplers.builder`):
it emits a :class:`Program`, a list of :class:`Step` (the level the model is evaluated at, the
float64 rows of linear coefficients over ``[x, x0, h_0..h_{K-1}, z]`` in state units and the
history slots written; row 0 is the next state, row j the new value of slot ``writes[j-1]``, and
every row reads the values from before the step). :func:`run_program` turns the
program into one coefficient table on the device, preallocates the history and noise buffers,
and runs ``model -> fused op`` per step: no per-step allocation beyond the model's own output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore import graphs, ops, plan_cache
from diffcore.denoiser import Denoiser
from diffcore.guidance import StepGuide, step_guides
from diffcore.samplers.brownian import BrownianPath
from diffcore.samplers.flags import StepFlags, release_buffer, slots_read_unwritten, take_buffer, take_history
from diffcore.timesteps import Level


@dataclass
class Step:
    """One model evaluation and fused update.

    A CFG++ step (``uncond``) reads the unconditional x0: its x0 is that of guidance scaled by
    ``factor``, and ``side_rows`` (over the same columns, x0 meaning the unconditional x0) are
    history values written by a fused op on the unconditional output before the step's own op.
    Without guidance (or outside the guidance interval) the unconditional x0 is the model's x0,
    so a CFG++ sampler is its base sampler there.
    """

    level: Level
    rows: np.ndarray  # (1 + len(writes), 3 + slots)
    writes: tuple[int, ...] = ()
    noise: bool = False
    sigma: float = 0.0  # VE noise level after the step, for callbacks
    span: tuple[float, float] | None = None  # Brownian noise: the increment between these VE levels
    uncond: bool = False  # reads the unconditional x0 (CFG++)
    factor: float = 1.0  # CFG++: the guidance scale of this step's x0 is factor * w
    side_rows: np.ndarray | None = None  # (len(side_writes), 3 + slots)
    side_writes: tuple[int, ...] = ()


@dataclass
class Program:
    """The steps of one sampling run and the number of history slots they use."""

    steps: list[Step] = field(default_factory=list)
    slots: int = 0


def _vectors(program: Program, denoiser: Denoiser) -> list[np.ndarray]:
    """Per step its coefficient vector; a step with side rows is followed by the side op's vector,
    whose row 0 keeps x as it is."""
    vectors = []
    for st in program.steps:
        a, b = denoiser.param.x0_coeffs(st.level.alpha, st.level.std)
        vectors.append(np.concatenate([[a, b], st.rows.reshape(-1)]))
        if st.side_rows is not None:
            keep_x = np.eye(1, st.rows.shape[1])[0]
            vectors.append(np.concatenate([[a, b], keep_x, st.side_rows.reshape(-1)]))
    return vectors


def _split(program: Program, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor | None]]:
    """The views of :func:`_table` as (main op per step, side op per step or None)."""
    it = iter(views)
    main, side = [], []
    for st in program.steps:
        main.append(next(it))
        side.append(next(it) if st.side_rows is not None else None)
    return main, side


def _table(
    programs: list[Program], denoiser: Denoiser, x: Tensor, per: list[list[np.ndarray]] | None = None
) -> list[Tensor]:
    """All steps' coefficients in one device buffer; a (width,) view per step for one program,
    a (B, width) view per step for one program per sample. ``per``: the programs' vectors, if made."""
    per = per if per is not None else [_vectors(p, denoiser) for p in programs]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if len(per) == 1:  # the common case: one copy, then views; no per-step stacking
        widths = [v.size for v in per[0]]
        flat = torch.from_numpy(np.concatenate(per[0])).to(device=x.device, dtype=dtype)
        return list(flat.split(widths))
    steps = len(per[0])
    blocks = [np.stack([v[k] for v in per]) for k in range(steps)]  # (P, width_k)
    flat = torch.from_numpy(np.concatenate([b.reshape(-1) for b in blocks])).to(device=x.device, dtype=dtype)
    views, start = [], 0
    for b in blocks:
        views.append(flat[start : start + b.size].reshape(b.shape))
        start += b.size
    return views


def _signature(programs: list[Program], per: list[list[np.ndarray]], denoiser: Denoiser) -> tuple[Any, ...]:
    """Everything a captured loop bakes in from the programs: structure, coefficient vectors
    (x0 conversion included), model times and input scales, as a hashable."""
    main = programs[0]
    shape = (len(programs), main.slots, tuple(_structure(st) for st in main.steps))
    coeffs = np.concatenate([v for vs in per for v in vs]).tobytes()
    times = np.array([[st.level.t for st in p.steps] for p in programs], dtype=np.float64).tobytes()
    scales = np.array(
        [[denoiser.param.input_scale(st.level.alpha, st.level.std) for st in p.steps] for p in programs],
        dtype=np.float64,
    ).tobytes()
    factors = np.array([[st.factor for st in p.steps] for p in programs], dtype=np.float64).tobytes()
    return shape, coeffs, times, scales, factors


def _structure(st: Step) -> tuple[Any, ...]:
    return st.writes, st.noise, st.rows.shape, st.uncond, st.side_writes


def check_same_structure(programs: list[Program]) -> None:
    """Per-sample programs must agree on everything but their coefficients."""
    ref = programs[0]
    for p in programs[1:]:
        same = (
            p.slots == ref.slots
            and len(p.steps) == len(ref.steps)
            and all(_structure(a) == _structure(b) for a, b in zip(p.steps, ref.steps))
        )
        if not same:
            raise ValueError("per-sample programs differ in structure (steps, history slots, writes or noise)")


Callback = Callable[[dict[str, Any]], None]
CACHED_BATCH = 65536  # larger batches make their (steps, B) model times per run instead of caching them


@dataclass
class _Run:
    """The device buffers of one run, made before the loop (and before any graph capture)."""

    table: list[Tensor]  # per step: the fused op's coefficients
    side: list[Tensor | None]  # per step: the side op's coefficients (CFG++ history of x0u), or None
    times: Tensor
    scales: list[Tensor | float]
    history: Tensor | None
    guides: list[StepGuide] | None  # per step, with guidance
    step_times: list[Tensor] | None = None  # per step: the (B,) model times, views of ``times``
    cache_key: Any = None  # where the tables came from in diffcore.plan_cache.runs (None: made for this run)
    flags: list[Tensor] | None = None  # per step: the op's non-finite flag (eager runs with check_finite)
    has_side: bool = False  # some step has a side op (CFG++); set by _buffers from the program


def _loop(
    denoiser: Denoiser,
    x: Tensor,
    program: Program,
    run: _Run,
    noise: Tensor | None,
    generator: torch.Generator | None,
    seed: int | None,
    callback: Callback | None,
    brownian: BrownianPath | None = None,
) -> None:
    # Everything static was checked once in run_program; the native op re-checks in C++.
    step, cfg_step = ops.step_kernels(x.device)
    history = run.history
    if run.guides is None and brownian is None and not run.has_side:
        _plain_loop(denoiser, x, program, run, noise, generator, seed, callback, step)
        return
    tail = denoiser.step_extras(x, seed)  # noise keys and x0 limit, after each op's offset
    flags = run.flags if run.flags is not None else [None] * len(program.steps)
    for k, (st, coeffs) in enumerate(zip(program.steps, run.table)):
        guide = run.guides[k] if run.guides is not None else None
        pred = denoiser(x, st.level, step=k, t=run.times[k], c_in=run.scales[k], guide=guide)
        z: Tensor | None
        if st.span is not None:
            assert brownian is not None
            z, step_seed = brownian.noise(*st.span), -1
        else:
            z, step_seed = _noise(st, x, noise, generator, seed)
        side = run.side[k]
        if side is not None:  # the unconditional x0 into history, before the step reads it
            if pred.uncond is not None:
                assert guide is not None
                cfg_step(x, pred.uncond, pred.cond, guide.side, side, history, None, st.side_writes, -1, k, *tail)
            else:  # no unconditional pass at this step: x0u is the x0 of the output
                step(x, pred.out, side, history, None, st.side_writes, -1, k, *tail)
        if pred.out is not None:
            step(x, pred.out, coeffs, history, z, st.writes, step_seed, k, *tail, flags[k])
        else:
            cfg_step(
                x, pred.uncond, pred.cond, pred.guidance, coeffs, history, z, st.writes, step_seed, k, *tail, flags[k]
            )
        if callback is not None:
            callback({"i": k, "t": st.level.t, "sigma": st.sigma, "x": x})


def _noise(
    st: Step, x: Tensor, noise: Tensor | None, generator: torch.Generator | None, seed: int | None
) -> tuple[Tensor | None, int]:
    """The noise arguments ``(z, seed)`` of a step's fused op: none, the in-kernel Philox stream of
    ``seed``, or the preallocated buffer refilled from ``generator``."""
    if not st.noise:
        return None, -1
    if seed is not None:  # counter-based noise drawn inside the fused kernel
        return None, seed
    assert noise is not None
    torch.randn(x.shape, generator=generator, out=noise, dtype=x.dtype, device=x.device)
    return noise, -1


def _plain_loop(
    denoiser: Denoiser,
    x: Tensor,
    program: Program,
    run: _Run,
    noise: Tensor | None,
    generator: torch.Generator | None,
    seed: int | None,
    callback: Callback | None,
    step: ops.StepFn,
) -> None:
    """The loop without guidance, side ops or Brownian noise: model output straight into the op.
    The model call is :meth:`Denoiser.output` spelled out (one Python call per step fewer)."""
    history = run.history
    tail = denoiser.step_extras(x, seed)  # noise keys and x0 limit, after each op's offset
    flags = run.flags if run.flags is not None else [None] * len(program.steps)
    step_times = run.step_times if run.step_times is not None else list(run.times.unbind(0))
    model, cond, shape, dtype, checked = denoiser.model, denoiser.cond, x.shape, x.dtype, denoiser.kernel_checked
    for k, (st, coeffs, t, c_in) in enumerate(zip(program.steps, run.table, step_times, run.scales)):
        x_in = x if isinstance(c_in, float) and c_in == 1.0 else x * c_in
        denoiser.evaluations += 1
        m = model(x_in, t) if cond is None else model(x_in, t, cond)
        if type(m) is not Tensor or m.shape != shape or m.dtype != dtype or not checked:
            m = denoiser.checked_output(m, x, k)
        if st.noise:
            z, step_seed = _noise(st, x, noise, generator, seed)
            step(x, m, coeffs, history, z, st.writes, step_seed, k, *tail, flags[k])
        else:
            step(x, m, coeffs, history, None, st.writes, -1, k, *tail, flags[k])
        if callback is not None:
            callback({"i": k, "t": st.level.t, "sigma": st.sigma, "x": x})


def run_program(
    denoiser: Denoiser,
    x: Tensor,
    program: Program | list[Program],
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    callback: Callback | None = None,
    cuda_graph: bool = False,
) -> Tensor:
    """Execute ``program`` on state ``x`` (updated in place and returned).

    ``program`` may be a list with one program per sample (same structure, different levels):
    each sample then steps with its own coefficients and model times in the same fused ops.
    Noise comes from ``generator`` (torch's RNG, a preallocated buffer refilled per step) or,
    with ``seed``, from the Philox stream generated inside the fused op (step k uses offset k).
    With ``denoiser.check_finite`` every eager fused op sets its step's device flag on a
    non-finite model output or x0, read once after the loop.
    ``cuda_graph=True`` (CUDA tensors) captures the whole loop, model included, in one CUDA graph
    and replays it; it needs ``seed`` noise and no callback. Graphs are kept in
    :data:`diffcore.graphs.cache`: a later identical run only copies ``x`` (and the conditioning)
    in and replays.
    """
    ops.check_noise_source(seed, generator)
    programs = program if isinstance(program, list) else [program]
    if len(programs) not in (1, x.shape[0]):
        raise ValueError(f"got {len(programs)} programs for a batch of {x.shape[0]}")
    check_same_structure(programs)
    main = programs[0]
    stochastic, brownian_noise, _ = _facts(main)
    if cuda_graph:
        return _run_graphed(denoiser, x, programs, seed=seed, stochastic=stochastic, callback=callback)
    run = _buffers(denoiser, x, programs, pooled=True)
    noise = None
    if stochastic and seed is None:  # refilled from the generator before every noisy step
        noise = take_buffer(tuple(x.shape), x, zero=False) if x.is_contiguous() else torch.empty_like(x)
    try:
        _check_static(x, main, run, noise)
        _run_eager(denoiser, x, programs, run, noise, generator, seed, callback, brownian_noise)
    finally:
        release_buffer(run.history)
        release_buffer(noise)
    if run.cache_key is not None and run.times._version:  # the model wrote into its (shared) times
        plan_cache.runs.discard(run.cache_key)
    denoiser.raise_deferred()
    return x


def _facts(program: Program) -> tuple[bool, bool, bool]:
    """Whether ``program`` draws noise, draws Brownian noise, has side ops (CFG++); kept on a
    cached (shared, never modified) program."""
    facts: tuple[bool, bool, bool] | None = getattr(program, "_diffcore_facts", None)
    if facts is None:
        steps = program.steps
        facts = (
            any(st.noise for st in steps),
            any(st.span is not None for st in steps),
            any(st.side_rows is not None for st in steps),
        )
        if plan_cache.key_of(program) is not None:
            object.__setattr__(program, "_diffcore_facts", facts)
    return facts


def _run_eager(
    denoiser: Denoiser,
    x: Tensor,
    programs: list[Program],
    run: _Run,
    noise: Tensor | None,
    generator: torch.Generator | None,
    seed: int | None,
    callback: Callback | None,
    brownian_noise: bool,
) -> None:
    """The eager loop of :func:`run_program` with its Brownian path and finiteness flags."""
    main = programs[0]
    brownian = None
    if brownian_noise:
        if len(programs) > 1:
            raise ValueError("Brownian-noise samplers cannot mix start levels in one batch")
        path_seed = seed if seed is not None else int(torch.randint(0, 2**62, (1,), generator=generator))
        brownian = BrownianPath(x, path_seed, denoiser.sample_index, denoiser.noise_mode)
    flags = StepFlags.take(len(main.steps), x.device) if denoiser.check_finite else None
    if flags is not None:  # the fused ops flag a non-finite x0 per step; read once, at the end
        run.flags, denoiser.kernel_checked = flags.views, True
    try:
        _loop(denoiser, x, main, run, noise, generator, seed, callback, brownian)
        if flags is not None:
            flags.check()
    finally:
        denoiser.kernel_checked = False
        if flags is not None:
            flags.release()


def _buffers(
    denoiser: Denoiser,
    x: Tensor,
    programs: list[Program],
    per: list[list[np.ndarray]] | None = None,
    pooled: bool = False,
) -> _Run:
    """The coefficient tables, model times, input scales, zeroed history and per-step guidance of a
    run; every host->device copy of the loop happens here, before any graph capture. ``pooled``:
    the history comes from this thread's pool (:func:`~diffcore.samplers.flags.take_buffer`); the
    caller gives it back."""
    main = programs[0]
    key = _tables_key(denoiser, x, programs) if per is None else None
    table, side, times, step_times, scales, unwritten = plan_cache.runs.get(
        key, lambda: _tables(denoiser, x, programs, per)
    )
    history = None
    if main.slots:
        shape = (main.slots, *x.shape)
        history = take_history(shape, x, unwritten) if pooled else torch.zeros(shape, dtype=x.dtype, device=x.device)
    guides = None
    if denoiser.guidance is not None:
        guides = step_guides(
            denoiser.guidance,
            [[st.level for st in p.steps] for p in programs],
            [[st.factor for st in p.steps] for p in programs],
            x,
            reads_uncond=[st.uncond for st in main.steps],
        )
    run = _Run(table, side, times, scales, history, guides, step_times=step_times, cache_key=key)
    run.has_side = _facts(main)[2]
    return run


def _tables(
    denoiser: Denoiser, x: Tensor, programs: list[Program], per: list[list[np.ndarray]] | None
) -> tuple[list[Tensor], list[Tensor | None], Tensor, list[Tensor], list[Tensor | float], tuple[int, ...] | None]:
    """The device tables of a run: coefficients (main and side op per step), model times (steps, B)
    with a (B,) view per step, input scales, and the history slots to zero (CPU tables: those
    :func:`~diffcore.samplers.flags.slots_read_unwritten` finds; None: all)."""
    main = programs[0]
    table, side = _split(main, _table(programs, denoiser, x, per))
    _check_structure(main, table)
    times = denoiser.time_table([[st.level.t for st in p.steps] for p in programs], x)
    scales = denoiser.scale_table([[st.level for st in p.steps] for p in programs], x)
    unwritten = None
    if main.slots and x.device.type == "cpu":
        ops_in_order = []
        for st, coeffs, side_coeffs in zip(main.steps, table, side):
            if side_coeffs is not None:  # the side op (CFG++) runs first
                ops_in_order.append((st.side_writes, side_coeffs))
            ops_in_order.append((st.writes, coeffs))
        unwritten = slots_read_unwritten(ops_in_order, main.slots)
    return table, side, times, list(times.unbind(0)), scales, unwritten


def _tables_key(denoiser: Denoiser, x: Tensor, programs: list[Program]) -> tuple[Any, ...] | None:
    """The key of :func:`_tables` in :data:`diffcore.plan_cache.runs`: one cached program, the
    parameterization, the table's dtype, the device and the batch size (None: not cached, as for
    batches over :data:`CACHED_BATCH`). The model receives the cached time tensors; a run whose
    model writes into them drops its entry (see :func:`run_program`)."""
    if x.shape[0] > CACHED_BATCH:
        return None
    program_key = plan_cache.key_of(programs[0]) if len(programs) == 1 else None
    param_key = plan_cache.parameterization_key(denoiser.param)
    if program_key is None or param_key is None:
        return None
    return ("run", program_key, param_key, x.dtype, x.device, denoiser.timestep_dtype, x.shape[0])


def _check_static(x: Tensor, main: Program, run: _Run, noise: Tensor | None) -> None:
    """Check the loop's arguments that depend on ``x``, once per run. The rest holds by
    construction: the tables were made for x's batch, dtype and device, their widths and writes
    checked against the program's slots (:func:`_check_structure`), the history and noise buffers
    made here for x; the native op re-checks everything in C++."""
    ops.check_state(x)


def _check_structure(main: Program, table: list[Tensor]) -> None:
    """Every step's coefficient width and history writes fit the program's slots, and the slots
    fit the kernels."""
    slots = main.slots
    if slots > ops.MAX_HISTORY_SLOTS:
        raise ValueError(f"program has {slots} history slots; the kernels support at most {ops.MAX_HISTORY_SLOTS}")
    for k, (st, coeffs) in enumerate(zip(main.steps, table)):
        if coeffs.shape[-1] != ops.coeff_width(slots, len(st.writes)) or any(not 0 <= w < slots for w in st.writes):
            raise ValueError(
                f"program step {k}: {coeffs.shape[-1]} coefficients or writes {st.writes} do not fit {slots} slots"
            )


def _run_graphed(
    denoiser: Denoiser,
    x: Tensor,
    programs: list[Program],
    *,
    seed: int | None,
    stochastic: bool,
    callback: Callback | None,
) -> Tensor:
    """The loop as one CUDA graph, replayed from :data:`diffcore.graphs.cache` when an identical
    run (model, program, shapes, conditioning structure, guidance, seed if stochastic) was captured."""
    graphs.check_capturable(x, stochastic=stochastic, seed=seed, callback=callback)
    main = programs[0]
    per = [_vectors(p, denoiser) for p in programs]

    def build() -> tuple[Callable[[Tensor], None], tuple[Any, ...]]:
        run = _buffers(denoiser, x, programs, per)
        _check_static(x, main, run, None)

        def loop(state: Tensor) -> None:
            if run.history is not None:  # as in an eager run, where history starts at zero
                run.history.zero_()
            brownian = None
            if any(st.span for st in main.steps) and seed is not None:
                brownian = BrownianPath(state, seed, denoiser.sample_index, denoiser.noise_mode)
            _loop(denoiser, state, main, run, None, None, seed, None, brownian)

        return loop, (run,)

    def key() -> tuple[Any, Any, Any]:
        return graphs.graph_key(denoiser, x, _signature(programs, per, denoiser), seed if stochastic else None)

    return graphs.run_cached(denoiser, x, build, key)
