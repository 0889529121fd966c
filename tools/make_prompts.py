"""Make the shipped English prompts (src/media/sounds/en/*.wav) again with espeak-ng.

    .venv/bin/python tools/make_prompts.py            # every prompt of media.speech.PROMPTS
    .venv/bin/python tools/make_prompts.py 5 goodbye  # only these
    .venv/bin/python tools/make_prompts.py --check    # say which files differ, write none

What each prompt says is `media.speech.PROMPTS` (slug -> text); `media.speech.prompt_audio`
makes espeak-ng's 22.05 kHz speech 8 kHz, trims it and sets its level, and the result is
written as G.711 mu-law mono WAV, quantized by `media.g711` (libsndfile's own encoder
rounds a few values the other way): half the size of 16-bit, and a PCMU phone gets the very
codes a 16-bit file would have given it. The same espeak-ng version, voice and speed give
the same bytes (espeak-ng 1.51, en-us, 150 words a minute made the shipped set).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout, installed or not

from media.g711 import ULAW_DECODE, ulaw_encode  # noqa: E402
from media.prompts import RATE, Samples  # noqa: E402
from media.speech import PROMPTS, SPEED, VOICE, speak  # noqa: E402
from pbx.errors import MediaError  # noqa: E402

OUT = ROOT / "src" / "media" / "sounds" / "en"


def wav_bytes(samples: Samples) -> bytes:
    levels = ULAW_DECODE[np.frombuffer(ulaw_encode(samples), dtype=np.uint8)]
    out = io.BytesIO()
    soundfile.write(out, levels, RATE, subtype="ULAW", format="WAV")
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("slugs", nargs="*", help="only these prompts (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory (default {OUT})")
    parser.add_argument("--voice", default=VOICE, help=f"espeak-ng voice (default {VOICE})")
    parser.add_argument("--speed", type=int, default=SPEED, help="words a minute")
    parser.add_argument("--check", action="store_true", help="compare only, write nothing")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    unknown = [slug for slug in args.slugs if slug not in PROMPTS]
    if unknown:
        raise SystemExit(f"no such prompt: {', '.join(unknown)}")
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True)
    print(version.stdout.strip(), f"voice {args.voice}, {args.speed} wpm", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    differ, total = 0, 0
    for slug in args.slugs or PROMPTS:
        try:
            samples = speak(PROMPTS[slug], args.voice, args.speed)
        except MediaError as exc:
            raise SystemExit(str(exc)) from None
        data = wav_bytes(samples)
        path = args.out / f"{slug}.wav"
        old = path.read_bytes() if path.exists() else b""
        same = hashlib.sha256(old).digest() == hashlib.sha256(data).digest()
        differ += not same
        total += len(data)
        rms = 20 * np.log10(np.sqrt(np.mean(samples.astype(np.float64) ** 2)) / 32767)
        print(f"{slug:24} {len(samples) / RATE:5.2f} s {rms:6.1f} dBFS"
              f"{'' if same else '  (changed)'}")  # fmt: skip
        if not args.check and not same:
            path.write_bytes(data)
    print(f"{total / 1024:.0f} KiB in all; {differ} differ", file=sys.stderr)
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
