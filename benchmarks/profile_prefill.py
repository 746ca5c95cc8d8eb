"""Where one model prefill (or one batch-1 decode step) spends its time: torch profiler tables.

    python -m benchmarks.profile_prefill --shape 0.8b --tokens 8192 [--decode | --append 256]

Prints the top CUDA kernels by device time, the data-moving and elementwise ops by input shape, the
GPU's idle gaps between kernels (where the host or a sync held it up), then (for decode, which is
host-bound) the top ops by host time, and the wall and host-enqueue times of an unprofiled call.
--host instead times the host side of one unprofiled call: per layer, the seconds from entering its
mixer to leaving its FFN (a layer far slower than its peers waits for the GPU: a sync), the ops that
synchronise (torch's sync debug mode) and the Python functions with the most own time (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.e2e import SHAPES, random_init_, text_config
from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.model import HybridModel

# Ops that only move data: their input shapes tell which layout conversion they come from.
COPY_OPS = ("aten::clone", "aten::copy_", "aten::contiguous", "aten::repeat_interleave", "aten::cat")
# Torch ops that launch small kernels of their own (fusion candidates), listed by input shape too.
ELEMENTWISE_OPS = ("aten::mul", "aten::add", "aten::sub", "aten::neg", "aten::sigmoid", "aten::exp", "aten::fill_",
                   "aten::zero_", "aten::index_select", "aten::embedding", "aten::to", "aten::_to_copy", "aten::arange")


def idle_gaps(prof, top: int = 8) -> list[str]:
    """Lines describing the GPU's busy time, span and largest gaps between consecutive kernels."""
    kernels = sorted(
        (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
        key=lambda e: e.time_range.start,
    )
    if not kernels:
        return ["no CUDA kernels recorded"]
    span = kernels[-1].time_range.end - kernels[0].time_range.start
    busy = sum(e.time_range.elapsed_us() for e in kernels)
    gaps = [
        (nxt.time_range.start - cur.time_range.end, cur.name, nxt.name) for cur, nxt in zip(kernels, kernels[1:])
    ]
    idle = sum(g for g, _, _ in gaps if g > 0)
    lines = [f"GPU: {len(kernels)} kernels, busy {busy / 1e3:.2f} ms of a {span / 1e3:.2f} ms span, "
             f"idle {idle / 1e3:.2f} ms"]
    for gap, before, after in sorted(gaps, reverse=True)[:top]:
        lines.append(f"  gap {gap:8.1f} us  after {before[:50]:<50} before {after[:50]}")
    return lines


def host_report(model: HybridModel, run) -> None:
    """Per-layer host enqueue times, synchronising ops and the top Python functions of `run()`."""
    marks: list[tuple[str, float]] = []
    for i, layer in enumerate(model.layers):
        mixer = layer.linear_attn if layer.kind == "linear_attention" else layer.self_attn

        def timed(*args, _prefill=mixer.prefill, i=i):
            marks.append((f"layer {i} in", time.perf_counter()))
            return _prefill(*args)

        mixer.prefill = timed
        layer.mlp.register_forward_hook(lambda m, a, o, i=i: marks.append((f"layer {i} out", time.perf_counter())))
    torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    enqueued = time.perf_counter() - started
    torch.cuda.synchronize()
    print(f"host enqueue {enqueued * 1e3:.2f} ms, wall {(time.perf_counter() - started) * 1e3:.2f} ms")
    print("per-layer host ms: " + " ".join(
        f"{(b[1] - a[1]) * 1e3:.2f}" for a, b in zip(marks[::2], marks[1::2])
    ))
    torch.cuda.set_sync_debug_mode("warn")
    run()
    torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.8b")
    parser.add_argument("--tokens", type=int, default=8192, help="prompt length (the decode's history with --decode)")
    parser.add_argument("--decode", action="store_true", help="profile one batch-1 decode step instead")
    parser.add_argument("--append", type=int, default=0, help="profile appending this many tokens to the session")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--host", action="store_true", help="time the host side per layer instead (see above)")
    args = parser.parse_args()
    model = HybridModel(ModelConfig.from_dict(text_config(args.shape)), dtype=torch.bfloat16, device="cuda")
    random_init_(model)
    ids = torch.randint(0, 240000, (args.tokens,), device="cuda")
    with torch.inference_mode():
        if args.decode or args.append:
            state = model.new_state()
            model.prefill(ids, state)
        if args.decode:
            token = ids[:1]
            run = lambda: model.decode(token, [state])  # noqa: E731
        elif args.append:
            new_ids = ids[: args.append]
            run = lambda: model.prefill(new_ids, state.clone())  # noqa: E731
        else:
            run = lambda: model.prefill(ids, model.new_state())  # noqa: E731
        run()
        torch.cuda.synchronize()
        if args.host:
            host_report(model, run)
            return
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            run()
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        enqueued_ms = (time.perf_counter() - started) * 1e3
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - started) * 1e3
    table = prof.key_averages()
    print(table.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    by_shape = prof.key_averages(group_by_input_shape=True)
    for title, ops in (("copies", COPY_OPS), ("elementwise ops", ELEMENTWISE_OPS)):
        print(f"{title} by input shape:")
        for event in sorted((e for e in by_shape if e.key in ops), key=lambda e: -e.device_time_total)[:12]:
            ms = event.device_time_total / 1e3
            print(f"  {event.key:<18}{event.count:>5} calls {ms:>8.3f} ms  {event.input_shapes}")
    print(*idle_gaps(prof), sep="\n")
    if args.decode or args.append:
        print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    what = "decode step" if args.decode else f"append {args.append} (incl. state clone)" if args.append else "prefill"
    print(f"{what} after {args.tokens} tokens: {wall_ms:.2f} ms wall, {enqueued_ms:.2f} ms to enqueue (unprofiled)")


if __name__ == "__main__":
    main()
