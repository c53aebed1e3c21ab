"""Where the Taylor pass spends its time beyond a bare forward+backward (GPU, Llama-3-8B shapes, random bf16).

    PYTHONPATH=. python experiments/profile_taylor.py [--seq-len 512] [--batches 2]

Prints the top CUDA kernels of each pass (torch.profiler) and their totals; needs only torch + transformers.
"""
from __future__ import annotations

import argparse

import torch

from prune.bench import PRESETS, bare_pass, build_model, random_windows
from prune.importance.gradients import gradient_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    device = torch.device("cuda")
    model = build_model(PRESETS["llama3_8b"]["shape"], device, torch.bfloat16)
    windows = random_windows(args.batches * args.batch_size, args.seq_len, model.config.vocab_size).to(device)
    passes = {
        "bare": lambda: bare_pass(model, windows, args.batch_size),
        "taylor_1st": lambda: gradient_pass(model, windows, args.batch_size, fisher=None, progress=False),
        "taylor_2nd": lambda: gradient_pass(model, windows, args.batch_size, fisher="sample", progress=False),
    }
    for name, run in passes.items():
        run()  # warm-up
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
            torch.cuda.synchronize()
        print(f"===== {name}: seq_len {args.seq_len}, {args.batches} batches of {args.batch_size}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
