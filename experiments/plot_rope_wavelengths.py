"""Plots the wavelength of every RoPE band under each scaling: docs/figures/rope_wavelengths.png.

    python -m experiments.plot_rope_wavelengths [--out docs/figures/rope_wavelengths.png]

Llama-2-like setting (head dim 128, base 1e4, pretrained length L = 4096) extended 8x; the
ratio panel shows which bands each method changes (1 = untouched, 8 = interpolated as PI).
The figure itself: `longctx_jax.eval.plots.plot_rope_wavelengths`.
"""

import argparse
import pathlib

from longctx_jax.eval.plots import plot_rope_wavelengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/rope_wavelengths.png")
    out = pathlib.Path(parser.parse_args().out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_rope_wavelengths(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
