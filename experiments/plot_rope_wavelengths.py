"""Plots the wavelength of every RoPE band under each scaling: docs/figures/rope_wavelengths.png.

    python -m experiments.plot_rope_wavelengths [--out docs/figures/rope_wavelengths.png]

Llama-2-like setting (head dim 128, base 1e4, pretrained length L = 4096) extended 8x; the
ratio panel shows which bands each method changes (1 = untouched, 8 = interpolated as PI).
"""

import argparse
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longctx_jax.positional.rope import rope_frequencies  # noqa: E402

HEAD_DIM, BASE, LENGTH, FACTOR = 128, 1e4, 4096, 8.0
METHODS = {
    "default": None,
    "linear (PI)": {"rope_type": "linear", "factor": FACTOR},
    "ntk": {"rope_type": "ntk", "factor": FACTOR},
    "dynamic (T = 8L)": {"rope_type": "dynamic", "factor": FACTOR,
                         "original_max_position_embeddings": LENGTH},
    "yarn": {"rope_type": "yarn", "factor": FACTOR, "original_max_position_embeddings": LENGTH},
    "llama3": {"rope_type": "llama3", "factor": FACTOR, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": LENGTH},
    "longrope (ramp lists)": {
        "rope_type": "longrope", "factor": FACTOR, "original_max_position_embeddings": LENGTH,
        "short_factor": [1.0] * (HEAD_DIM // 2),
        # Illustrative long factors: 1 for the fastest bands, rising smoothly to the factor.
        "long_factor": (1.0 + (FACTOR - 1.0) * np.linspace(0, 1, HEAD_DIM // 2) ** 2).tolist(),
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/rope_wavelengths.png")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    plain, _ = rope_frequencies(HEAD_DIM, BASE)
    bands = np.arange(HEAD_DIM // 2)
    fig, (ax_wave, ax_ratio) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, cfg in METHODS.items():
        inv_freq, factor = rope_frequencies(HEAD_DIM, BASE, cfg, seq_len=int(FACTOR * LENGTH))
        wavelength = 2 * math.pi / inv_freq.astype(np.float64)
        label = name if factor == 1.0 else f"{name} (attn x{factor:.3f})"
        ax_wave.semilogy(bands, wavelength, label=label)
        ax_ratio.semilogy(bands, plain / inv_freq, label=name)
    for ax in (ax_wave, ax_ratio):
        ax.set_xlabel("band index i (channel pair)")
        ax.grid(alpha=0.3)
    ax_wave.axhline(LENGTH, color="k", ls=":", lw=1)
    ax_wave.axhline(LENGTH / 32, color="gray", ls=":", lw=1)
    ax_wave.text(1, LENGTH * 1.3, "L = 4096", fontsize=8)
    ax_wave.text(1, LENGTH / 32 * 1.3, "L / beta_fast", fontsize=8)
    ax_wave.set_ylabel("wavelength 2 pi / inv_freq (tokens)")
    ax_wave.set_title(f"RoPE wavelengths, d={HEAD_DIM}, base={BASE:g}, s={FACTOR:g}")
    ax_ratio.set_ylabel("scaled wavelength / plain wavelength")
    ax_ratio.set_title("which bands each method stretches")
    ax_wave.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
