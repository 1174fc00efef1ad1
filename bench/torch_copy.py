"""PyTorch reference for `rigdoctor bandwidth` on one GPU: H2D, D2H and a copy within the GPU,
with the same size, iterations and samples, pinned (not write-combined) host memory and CUDA
events, median of the samples, GB = 1e9 bytes. Run in the same session as rigdoctor:

    python3 bench/torch_copy.py --size-mib 32 --iters 16 --warmup 2 --samples 3 --device 0
"""
import argparse
import json
import statistics

import torch


def timed(copy, iters, warmup, samples):
    out = []
    for _ in range(samples):
        for _ in range(warmup):
            copy()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            copy()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=32)
    p.add_argument("--iters", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--device", type=int, default=0)
    a = p.parse_args()
    n = a.size_mib << 20
    dev = torch.device("cuda", a.device)
    torch.cuda.set_device(dev)
    host = torch.empty(n, dtype=torch.uint8).pin_memory()
    host.random_(0, 255)
    d1 = torch.empty(n, dtype=torch.uint8, device=dev)
    d2 = torch.empty(n, dtype=torch.uint8, device=dev)
    cases = {
        "h2d": lambda: d1.copy_(host, non_blocking=True),
        "d2h": lambda: host.copy_(d1, non_blocking=True),
        "local": lambda: d2.copy_(d1, non_blocking=True),
    }
    result = {}
    for name, fn in cases.items():
        ms = timed(fn, a.iters, a.warmup, a.samples)
        result[name] = statistics.median(n * a.iters / (t * 1e-3) / 1e9 for t in ms)
    print(json.dumps({"torch": torch.__version__, "size_bytes": n, "gbps": result}))


if __name__ == "__main__":
    main()
