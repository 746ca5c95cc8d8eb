"""Where one model prefill spends its GPU time: torch profiler table of the top CUDA kernels.

    python benchmarks/profile_prefill.py --shape 0.8b --tokens 8192
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.e2e import SHAPES, random_init_, text_config
from qla_agent.runtime.config import ModelConfig
from qla_agent.runtime.model import HybridModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.8b")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    model = HybridModel(ModelConfig.from_dict(text_config(args.shape)), dtype=torch.bfloat16, device="cuda")
    random_init_(model)
    ids = torch.randint(0, 240000, (args.tokens,), device="cuda")
    with torch.inference_mode():
        model.prefill(ids, model.new_state())
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.prefill(ids, model.new_state())
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
