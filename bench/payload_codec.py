"""What payload encryption costs per payload: keel's data converter against the plain one.

Run: ``.venv/bin/python bench/payload_codec.py [--rounds 2000]``

For a 4 KB and a 100 KB prompt (a pydantic model holding text, as keel's workflow inputs do), one
round trip = ``DataConverter.encode`` then ``decode`` back to the model, which is what a payload
costs between a client and a worker. Measured interleaved in one run: the plain pydantic
converter (what keel used before) and ``keel_data_converter`` (the same plus AES-256-GCM with a
fresh nonce, infra/payload_codec.py). Reports the median per round trip, the ratio and the added
microseconds; the codec alone (encrypt + decrypt of the serialized payload) is shown too.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

from pydantic import BaseModel, SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from infra.payload_codec import EncryptionCodec, new_key
from infra.settings import KeelSettings
from infra.temporal_client import keel_data_converter

SIZES = {"4 KB": 4 * 1024, "100 KB": 100 * 1024}
WORDS = [
    "the",
    "model",
    "answered",
    "with",
    "a",
    "summary",
    "of",
    "the",
    "contract",
    "clauses",
    "and",
    "their",
    "risks",
]


class Prompt(BaseModel):
    prompt: str
    model: str = "gpt-4o-mini"
    max_tokens: int = 512


def text_of(size: int, seed: int) -> str:
    chooser = random.Random(seed)
    words: list[str] = []
    length = 0
    while length < size:
        word = chooser.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


async def round_trip(converter: DataConverter, value: Prompt) -> float:
    started = time.perf_counter()
    payloads = await converter.encode([value])
    (back,) = await converter.decode(payloads, [Prompt])
    elapsed = time.perf_counter() - started
    assert back == value
    return elapsed


async def codec_only(codec: EncryptionCodec, converter: DataConverter, value: Prompt) -> float:
    (payload,) = await converter.encode([value])  # serialized outside the timing
    started = time.perf_counter()
    sealed = await codec.encode([payload])
    (opened,) = await codec.decode(sealed)
    elapsed = time.perf_counter() - started
    assert opened == payload
    return elapsed


async def main(rounds: int) -> None:
    settings = KeelSettings(encryption_keys=SecretStr(new_key("bench").entry()), encryption=True)
    keel = keel_data_converter(settings)
    codec = keel.payload_codec
    assert isinstance(codec, EncryptionCodec)
    plain = pydantic_data_converter
    print(f"payload codec · {rounds} round trips per size · median per encode+decode")
    print(f"{'payload':>8} {'plain':>10} {'encrypted':>10} {'ratio':>7} {'added':>9} {'codec':>9}")
    for label, size in SIZES.items():
        value = Prompt(prompt=text_of(size, seed=size))
        samples: dict[str, list[float]] = {"plain": [], "keel": [], "codec": []}
        for _ in range(50):  # warm-up: imports, caches, the AES key schedule
            await round_trip(plain, value)
            await round_trip(keel, value)
        for _ in range(rounds):
            order = [("plain", plain), ("keel", keel)]
            random.shuffle(order)
            for name, converter in order:
                samples[name].append(await round_trip(converter, value))
            samples["codec"].append(await codec_only(codec, plain, value))
        plain_us, keel_us, codec_us = (
            statistics.median(samples[name]) * 1e6 for name in ("plain", "keel", "codec")
        )
        print(
            f"{label:>8} {plain_us:>8.1f}µs {keel_us:>8.1f}µs {keel_us / plain_us:>6.2f}x "
            f"{keel_us - plain_us:>+7.1f}µs {codec_us:>7.1f}µs"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    asyncio.run(main(parser.parse_args().rounds))
