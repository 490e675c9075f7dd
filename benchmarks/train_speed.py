"""Training throughput on this machine: images/s of supervised steps and of FixMatch steps
(labeled + weak + strong unlabeled), and the share of a FixMatch step spent in the batched
strong augmentation. Synthetic uint8 batches, so decoding is not measured here.

    .venv/bin/python benchmarks/train_speed.py --quick
    .venv/bin/python benchmarks/train_speed.py --sizes 64 96 128 224 --device cuda

Writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write_results  # noqa: E402
from defectssft.modeling import build_model, default_normalization  # noqa: E402
from defectssft.training import objectives as obj  # noqa: E402
from defectssft.training.augment import StrongAugment, to_model_input  # noqa: E402
from defectssft.training.loop import ema_update  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model_name: str, size: int, batch: int, mu: int, steps: int, device: torch.device) -> dict:
    model = build_model(model_name, 6, weights="none").to(device).train()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    mean, std = default_normalization(model_name, "none")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    strong = StrongAugment().to(device)
    x_l = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y_l = torch.randint(0, 6, (batch,), device=device)
    x_u = torch.randint(0, 256, (batch * mu, 3, size, size), dtype=torch.uint8, device=device)

    def sup_step() -> None:
        loss = obj.supervised_loss(model(to_model_input(x_l, mean, std)), y_l)
        opt.zero_grad()
        loss.backward()
        opt.step()

    aug_time = [0.0]

    def ssl_step() -> None:
        sync(device)
        t = time.perf_counter()
        u_strong = to_model_input(strong(x_u), mean, std)
        sync(device)
        aug_time[0] += time.perf_counter() - t
        with torch.no_grad():
            probs = teacher(to_model_input(x_u, mean, std)).softmax(1)
        logits = model(torch.cat([to_model_input(x_l, mean, std), u_strong]))
        loss_u, _ = obj.fixmatch_loss(probs, logits[batch:], 0.95)
        loss = obj.supervised_loss(logits[:batch], y_l) + loss_u
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(teacher, model, 0.99)

    out = {"model": model_name, "size": size, "batch": batch, "mu": mu, "device": str(device)}
    for name, fn, images in (("supervised", sup_step, batch), ("fixmatch", ssl_step, batch * (1 + mu))):
        fn()  # warm-up
        aug_time[0] = 0.0
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        dt = (time.perf_counter() - t) / steps
        out[f"{name}_step_s"] = dt
        out[f"{name}_img_s"] = images / dt
        if name == "fixmatch":
            out["strong_aug_share"] = aug_time[0] / steps / dt
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="lite0 at 64 and 96 px, 3 steps each")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mu", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = [64, 96], 3
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(args.model, s, args.batch, args.mu, args.steps, device) for s in args.sizes]
    print(f"{'size':>5} {'sup img/s':>10} {'fixmatch img/s':>15} {'fixmatch s/step':>16} {'strong aug share':>17}")
    for r in rows:
        print(f"{r['size']:>5} {r['supervised_img_s']:>10.1f} {r['fixmatch_img_s']:>15.1f} "
              f"{r['fixmatch_step_s']:>16.2f} {100 * r['strong_aug_share']:>16.1f}%")
    out = write_results("train_speed", {"args": vars(args), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
