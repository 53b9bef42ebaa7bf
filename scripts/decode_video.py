#!/usr/bin/env python3
"""Decode a video file with PyAV (FFmpeg's decoders, bundled in the `av` wheel): an independent
check of the files stillflow writes (tests/video_mp4.rs).

Usage:  $STILLFLOW_VENV/bin/python scripts/decode_video.py VIDEO [--rgb-out FRAMES.rgb]

Prints one JSON object on stdout: container format, codec name, width, height, frame rate (as a
fraction and a float), number of decoded frames, pixel format, colour tags, PyAV and FFmpeg
versions. With --rgb-out it also writes every decoded frame as packed RGB u8 (rgb24, row-major,
frame after frame) to FRAMES.rgb, converted by FFmpeg's swscale the way a player would.

Needs `av` (pinned by the Makefile's venv step: av==18.1.0). Exit code 3 if it is missing.
"""
import json
import sys

AV_PIN = "av==18.1.0"
NUMPY_PIN = "numpy==2.4.6"


def main(argv):
    if len(argv) < 2 or argv[1].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[1]
    rgb_out = None
    if "--rgb-out" in argv:
        i = argv.index("--rgb-out")
        if i + 1 >= len(argv):
            print("--rgb-out needs a file name", file=sys.stderr)
            return 2
        rgb_out = argv[i + 1]
    try:
        import av
        if rgb_out is not None:
            import numpy  # noqa: F401  (PyAV's to_ndarray needs it)
    except ImportError as e:
        print(f"PyAV (with numpy) is not installed in {sys.executable} ({e}); install it with "
              f"`{sys.executable} -m pip install {AV_PIN} {NUMPY_PIN}` or run `make venv`",
              file=sys.stderr)
        return 3

    with av.open(path) as container:
        if not container.streams.video:
            print(f"{path}: no video stream", file=sys.stderr)
            return 1
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        n = 0
        sink = open(rgb_out, "wb") if rgb_out else None
        try:
            first = None
            for frame in container.decode(stream):
                if first is None:
                    first = frame
                if sink is not None:
                    sink.write(frame.to_ndarray(format="rgb24").tobytes())
                n += 1
        finally:
            if sink is not None:
                sink.close()
        info = {
            "format": container.format.name,
            "codec": ctx.name,
            "profile": ctx.profile,
            "width": ctx.width,
            "height": ctx.height,
            "fps_num": rate.numerator if rate else None,
            "fps_den": rate.denominator if rate else None,
            "fps": float(rate) if rate else None,
            "frames": n,
            "stream_frames": stream.frames,
            "pix_fmt": ctx.pix_fmt,
            "color_range": int(first.color_range) if first is not None else None,
            "colorspace": int(first.colorspace) if first is not None else None,
            "av_version": av.__version__,
            "ffmpeg_version": ".".join(map(str, av.ffmpeg_version_info))
            if isinstance(av.ffmpeg_version_info, tuple) else str(av.ffmpeg_version_info),
        }
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
