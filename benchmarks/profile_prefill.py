"""Where one model prefill (or one batch-1 decode step) spends its time: torch profiler tables.

    python -m benchmarks.profile_prefill --shape 0.8b --tokens 8192 [--decode | --append 256]

Prints the top CUDA kernels by device time, then (for decode, which is host-bound) the top ops by
host time, and the wall time of the profiled call.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.e2e import SHAPES, random_init_, text_config
from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.model import HybridModel

# Ops that only move data: their input shapes tell which layout conversion they come from.
COPY_OPS = ("aten::clone", "aten::copy_", "aten::contiguous", "aten::repeat_interleave", "aten::cat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.8b")
    parser.add_argument("--tokens", type=int, default=8192, help="prompt length (the decode's history with --decode)")
    parser.add_argument("--decode", action="store_true", help="profile one batch-1 decode step instead")
    parser.add_argument("--append", type=int, default=0, help="profile appending this many tokens to the session")
    parser.add_argument("--rows", type=int, default=20)
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
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            run()
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - started) * 1e3
    table = prof.key_averages()
    print(table.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    copies = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in COPY_OPS]
    print("copies by input shape:")
    for event in sorted(copies, key=lambda e: -e.device_time_total)[:12]:
        print(f"  {event.key:<14}{event.count:>5} calls {event.device_time_total / 1e3:>8.3f} ms  {event.input_shapes}")
    if args.decode or args.append:
        print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    what = "decode step" if args.decode else f"append {args.append} (incl. state clone)" if args.append else "prefill"
    print(f"{what} after {args.tokens} tokens: {wall_ms:.2f} ms wall (unprofiled)")


if __name__ == "__main__":
    main()
