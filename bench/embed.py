"""``uait bench embed``: the local embedder's throughput, beside torch + transformers on the same
weights and texts, in alternating rounds of one sitting.

Two workloads, both real English from this project's README: sentences (5 to 30 words, the
setting of the commonly quoted sentences/s) and chunks as ingestion makes them (1,200
characters with their title, truncated at 256 tokens like sentence-transformers does). Only the
embedding calls are timed, with the model loaded and warmed. The baseline runs in a Python that
has torch and transformers (``--baseline-python``; torch is not a dependency of uait: on a fresh
machine uv would fetch a ~3 GB CUDA build), on the same threads, batch size and padding; its
vectors are compared with ours (cosine).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from infra.embeddings import MiniLM, minilm_folder
from workers.knowledge.chunking import chunk_spans
from workers.knowledge.embedding import ChunkEmbedder

console = Console()

README = Path(__file__).resolve().parents[1] / "README.md"

# Runs in the baseline's Python: the same weights through transformers, sentence-transformers'
# pooling (mean over the real tokens, then L2), timed per round.
BASELINE = r"""
import json, sys, time
import torch
from transformers import AutoModel, AutoTokenizer
spec = json.load(open(sys.argv[1]))
torch.set_num_threads(spec["threads"])
tok = AutoTokenizer.from_pretrained(spec["folder"])
model = AutoModel.from_pretrained(spec["folder"]).eval()
def embed(texts, bs):
    out = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for s in range(0, len(texts), bs):
            picked = [texts[i] for i in order[s:s + bs]]
            enc = tok(picked, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.extend(zip(order[s:s + bs], torch.nn.functional.normalize(pooled, dim=1)))
    out.sort(key=lambda p: p[0])
    return torch.stack([v for _, v in out]).numpy()
embed(spec["warm"], spec["batch"])
for line in sys.stdin:
    name = line.strip()
    texts = spec["workloads"][name]
    started = time.perf_counter()
    vectors = embed(texts, spec["batch"])
    took = time.perf_counter() - started
    print(json.dumps({"name": name, "seconds": took, "sample": vectors[:50].tolist()}), flush=True)
"""


@dataclass(frozen=True)
class Workloads:
    sentences: list[str]
    chunks: list[str]


def workloads(sentences: int, chunks: int) -> Workloads:
    text = README.read_text(encoding="utf-8")
    plain = re.sub(r"`[^`]*`|\[|\]\([^)]*\)|[#*|>_-]{2,}|<[^>]+>", " ", text)
    found = [
        s.strip()
        for s in re.split(r"(?<=[.!?])\s+|\n\n", plain)
        if 5 <= len(s.split()) <= 30 and not s.lstrip().startswith("|")
    ]
    if not found:
        raise SystemExit(f"no sentences in {README}")
    picked = [found[i % len(found)] for i in range(sentences)]
    spans = chunk_spans(text, 1200, 150)
    title = "Universal AI Tools"
    pieces = ChunkEmbedder.inputs(title, text, spans)
    return Workloads(picked, [pieces[i % len(pieces)] for i in range(chunks)])


def _rate(seconds: list[float], n: int) -> float:
    return n / statistics.median(seconds)


def main(
    *, sentences: int, chunks: int, rounds: int, batch: int, threads: int, baseline: str
) -> None:
    work = workloads(sentences, chunks)
    names = {"sentences": work.sentences, "chunks": work.chunks}
    ours = MiniLM(threads=threads or None, batch_size=batch)
    ours.embed(work.sentences[:64])
    tokens = {
        name: statistics.mean(len(e.ids) for e in ours.tokenizer.encode_batch(texts))
        for name, texts in names.items()
    }
    proc = None
    if baseline:
        spec = {
            "folder": str(minilm_folder()),
            "threads": threads or min(os.cpu_count() or 1, 8),
            "batch": batch,
            "warm": work.sentences[:64],
            "workloads": names,
        }
        tmp = Path(tempfile.mkdtemp(prefix="uait-bench-embed-"))
        (tmp / "spec.json").write_text(json.dumps(spec))
        (tmp / "baseline.py").write_text(BASELINE)
        proc = subprocess.Popen(
            [baseline, str(tmp / "baseline.py"), str(tmp / "spec.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    timings: dict[tuple[str, str], list[float]] = {}
    agreement: dict[str, float] = {}
    for r in range(rounds):
        for name, texts in names.items():
            order = ["uait", "torch"] if r % 2 == 0 else ["torch", "uait"]
            for who in order:
                if who == "uait":
                    started = time.perf_counter()
                    vectors = ours.embed(texts)
                    timings.setdefault(("uait", name), []).append(time.perf_counter() - started)
                    mine = vectors[:50]
                elif proc is not None:
                    assert proc.stdin is not None
                    assert proc.stdout is not None
                    proc.stdin.write(name + "\n")
                    proc.stdin.flush()
                    answer = json.loads(proc.stdout.readline())
                    timings.setdefault(("torch", name), []).append(answer["seconds"])
                    theirs = np.array(answer["sample"], dtype=np.float32)
            if proc is not None:
                cos = float(np.min(np.sum(mine * theirs, axis=1)))
                agreement[name] = min(agreement.get(name, 1.0), cos)
        console.print(f"round {r + 1}/{rounds} done")
    if proc is not None:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    table = Table(
        title=f"Embedding all-MiniLM-L6-v2, {threads or os.cpu_count()} threads, batch {batch}"
    )
    table.add_column("workload")
    table.add_column("texts", justify="right")
    table.add_column("mean tokens", justify="right")
    table.add_column("uait onnxruntime /s", justify="right")
    table.add_column("torch + transformers /s", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("min cosine", justify="right")
    rates: dict[tuple[str, str], float] = {}
    for name, texts in names.items():
        rates[("uait", name)] = _rate(timings[("uait", name)], len(texts))
        torch_rate = (
            _rate(timings[("torch", name)], len(texts)) if ("torch", name) in timings else None
        )
        if torch_rate is not None:
            rates[("torch", name)] = torch_rate
        table.add_row(
            name,
            f"{len(texts):,}",
            f"{tokens[name]:.1f}",
            f"{rates[('uait', name)]:,.0f}",
            f"{torch_rate:,.0f}" if torch_rate else "-",
            f"{rates[('uait', name)] / torch_rate:.2f}x" if torch_rate else "-",
            f"{agreement[name]:.6f}" if name in agreement else "-",
        )
    console.print(table)
    console.print(f"medians of {rounds} alternating rounds; only the embedding calls are timed")
    line = (
        f"embed: {rates[('uait', 'sentences')]:,.0f} sentences/s,"
        f" {rates[('uait', 'chunks')]:,.0f} chunks/s"
    )
    if ("torch", "sentences") in rates:
        line += (
            f"; torch {rates[('torch', 'sentences')]:,.0f} sentences/s,"
            f" {rates[('torch', 'chunks')]:,.0f} chunks/s;"
            f" {rates[('uait', 'sentences')] / rates[('torch', 'sentences')]:.2f}x"
            f" / {rates[('uait', 'chunks')] / rates[('torch', 'chunks')]:.2f}x"
        )
    print(line)
