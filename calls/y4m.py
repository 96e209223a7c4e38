"""A synthetic camera: a y4m file of a moving, textured scene for Chromium's fake capture device.

Chromium's built-in fake camera (a few flat shapes) encodes to ~270 kbit/s, far below a real webcam, so a call
with it never asks the link for the profile's bitrate. This scene is a grid of random grey blocks scrolling
diagonally with coloured bands: it costs the encoder about what a webcam picture of an office does. Written
at run time (tens of MB), never committed. Pure Python (no numpy in the dependencies): each frame is row
slices of a pre-drawn texture, so 90 frames of 640x360 take well under a second.
"""

from __future__ import annotations

import random
from pathlib import Path

BLOCK = 16  # texture block, pixels: coarse enough that motion compensation finds it


def _texture(width: int, height: int, seed: int) -> list[bytes]:
    """Rows of a width x height grid of random grey blocks, each row doubled so a scroll is one slice."""
    rng = random.Random(seed)
    cols, rows = width // BLOCK + 1, height // BLOCK + 1
    grid = [[rng.randrange(30, 226) for _ in range(cols)] for _ in range(rows)]
    out = []
    for y in range(height):
        g = grid[y // BLOCK]
        # A gentle ramp inside each block so it is not flat (a flat block costs the encoder nothing); per-pixel
        # noise instead made the encoder drop 720p to 540p at 2.5 Mbit/s on a clean link, unlike a webcam.
        row = bytes(min(255, g[x // BLOCK] + (x % BLOCK) + (y % BLOCK)) for x in range(width))
        out.append(row + row)
    return out


def write(path: Path, width: int, height: int, fps: int, frames: int | None = None, seed: int = 14) -> Path:
    """Write the scene as 4:2:0 y4m; `frames` defaults to 3 s (Chromium loops the file)."""
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"video size {width}x{height}: both sides even and at least 16")
    n = frames if frames is not None else 3 * fps
    tex = _texture(width, height, seed)
    cw, ch = width // 2, height // 2
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(n):
            dx, dy = (i * 5) % width, (i * 2) % height
            f.write(b"FRAME\n")
            f.write(b"".join(tex[(y + dy) % height][dx : dx + width] for y in range(height)))
            # Chroma: slow coloured bands sliding the other way, so colour changes too.
            u = bytes(96 + ((x + i) // 20 % 4) * 20 for x in range(cw))
            v = bytes(160 - ((x * 3 + 2 * i) // 40 % 4) * 15 for x in range(cw))
            f.write(u * ch)
            f.write(v * ch)
    return path
