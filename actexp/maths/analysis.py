"""Does centring help, and which pooling chunk? Retrieval and geometry of vector sets, per variant
(raw, centred) and per chunk plus all chunks together (README, "Analysis"). Pure numpy."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import geometry, retrieval

RETRIEVAL = ("recall@1", "recall@5", "mrr", "margin")
GEOMETRY = ("anisotropy", "rogue_share", "pc1_share", "pcs_for_90")


def chunk_key(label: str) -> str:
    """A chunk label as a metric-name part: "exp 0.067" -> "exp0.067"."""
    return label.replace(" ", "")


@dataclass
class Analysis:
    records: List[dict] = field(default_factory=list)  # one per number: metric, variant, chunk, value, texts ...
    coords: Dict[str, np.ndarray] = field(default_factory=dict)  # variant -> [N, 2] on the first two PCs (all chunks)
    explained: Dict[str, List[float]] = field(default_factory=dict)  # variant -> the two PCs' shares of the variance

    def metrics(self) -> Dict[str, float]:
        """Flat names for W&B summaries: eval/<metric>/<variant>/<chunk>, geometry/<metric>/<variant>/<chunk>."""
        return {f"{'eval' if r['metric'] in RETRIEVAL else 'geometry'}/{r['metric']}/{r['variant']}/{r['chunk']}": r["value"]
                for r in self.records}

    def value(self, metric: str, variant: str, chunk: str = "all") -> Optional[float]:
        return next((r["value"] for r in self.records if (r["metric"], r["variant"], r["chunk"]) == (metric, variant, chunk)), None)


def analyze(vectors: Dict[str, np.ndarray], chunk_labels: Sequence[str], groups: Optional[Sequence] = None,
            partners: Optional[Sequence[Optional[int]]] = None) -> Analysis:
    """vectors: variant -> [N, C*H] for the same N texts; chunk_labels: the C chunks' labels.

    With groups, retrieval (of each text's partner when partners are given, else of its group) and
    the margin; anisotropy then averages over texts of different groups, else over all pairs.
    """
    out = Analysis()
    n_chunks = len(chunk_labels)
    rel = None if groups is None else retrieval.relevance(groups, partners)
    for variant, x in vectors.items():
        x = np.asarray(x, dtype=np.float64)
        n, dims = x.shape
        if dims % n_chunks:
            raise ValueError(f"{dims} dims do not split into {n_chunks} chunks")
        if n < 2:
            raise ValueError("the analysis needs at least two texts")
        pairs = geometry.pair_mask(n, groups)
        width = dims // n_chunks
        parts = [("all", x)] + [(chunk_key(c), x[:, k * width:(k + 1) * width]) for k, c in enumerate(chunk_labels)
                                if chunk_key(c) != "all"]  # unlabelled vectors: one chunk, "all", once
        for chunk, part in parts:  # one chunk too: its name compares with the same chunk of a longer pooling
            def add(metric, value, **extra):
                out.records.append({"metric": metric, "variant": variant, "chunk": chunk, "value": value, "texts": n} | extra)

            if rel is not None and rel.any():
                sim = retrieval.cosine_matrix(part)  # [N, N]
                found = retrieval.retrieval(sim, rel)
                for metric in ("recall@1", "recall@5", "mrr"):
                    add(metric, found[metric], queries=found["queries"])
                m = retrieval.margin(sim, groups)
                add("margin", m["margin"], same_group=m["same_group"], different_group=m["different_group"])
            shape = geometry.anisotropy(part, pairs)
            add("anisotropy", shape["anisotropy"], pairs=int(pairs.sum()) // 2)
            add("rogue_share", shape["rogue_share"], dims=shape["rogue_dims"])
            pcs = geometry.principal_components(part)
            add("pc1_share", pcs["pc1_share"])
            add("pcs_for_90", pcs["pcs_for_90"])
            if chunk == "all":
                out.coords[variant], out.explained[variant] = pcs["coords"], pcs["shares"]
    return out
