#!/usr/bin/env python3
"""Diagnostic (GPU): what the Wan VAE decoder's biggest layers can reach with PyTorch on this card,
to tell how far stillflow's decode (README "Inference speed") is from the kernels' limit.
Times, for the full-resolution stage of one latent frame (4 video frames + 2 cached, 480×832):
a 3×3×3 conv3d 96→96 in bf16, NCDHW vs channels-last (NDHWC), cuDNN autotuning off/on; the same at
the 240×416 stage (192→192); and the RMS norm over channels in f32 vs bf16. Prints TFLOP/s.
usage: python3 scripts/vae_conv_microbench.py
"""
import torch
import torch.nn.functional as F


def timeit(fn, n=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n / 1e3


def main():
    dev = "cuda"
    print(torch.cuda.get_device_name(0), torch.__version__)
    for (c, h, w) in ((96, 480, 832), (192, 240, 416), (384, 120, 208)):
        x = torch.randn(1, c, 6, h, w, device=dev, dtype=torch.bfloat16)
        wt = torch.randn(c, c, 3, 3, 3, device=dev, dtype=torch.bfloat16) * 0.01
        b = torch.zeros(c, device=dev, dtype=torch.bfloat16)
        flops = 2 * 27 * c * c * h * w * 4
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for cl in (False, True):
                xx = x.contiguous(memory_format=torch.channels_last_3d) if cl else x
                ww = wt.contiguous(memory_format=torch.channels_last_3d) if cl else wt
                t = timeit(lambda: F.conv3d(xx, ww, b, padding=(0, 1, 1)))
                print(f"conv3d {c}->{c} {h}x{w} 6→4 frames  channels_last={cl!s:5} autotune={bench!s:5}: "
                      f"{t*1e3:7.2f} ms  {flops / t / 1e12:6.1f} TFLOP/s")
        g = torch.ones(c, 1, 1, 1, device=dev, dtype=torch.bfloat16)
        y = x[:, :, :4]
        t32 = timeit(lambda: (F.normalize(y.float(), dim=1) * c**0.5).to(torch.bfloat16) * g)
        t16 = timeit(lambda: F.normalize(y, dim=1) * c**0.5 * g)
        gb = y.numel() * 2 / 1e9
        print(f"rms norm {c}ch {h}x{w}x4: f32 {t32*1e3:.2f} ms, bf16 {t16*1e3:.2f} ms ({gb:.2f} GB bf16 tensor)")


if __name__ == "__main__":
    main()
