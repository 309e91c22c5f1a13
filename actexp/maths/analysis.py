"""Does centring help, and which pooling chunk? Retrieval and geometry of vector sets, per variant
(raw, centred) and per chunk plus all chunks together (README, "Analysis"). Pure numpy."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import bootstrap, geometry, retrieval

RETRIEVAL = ("recall@1", "recall@5", "mrr", "margin")
PER_QUERY = ("recall@1", "recall@5", "mrr")  # means over queries: each gets an interval, a chance level, a difference
GEOMETRY = ("anisotropy", "rogue_share", "pc1_share", "pcs_for_90")


def chunk_key(label: str) -> str:
    """A chunk label as a metric-name part: "exp 0.067" -> "exp0.067"."""
    return label.replace(" ", "")


@dataclass
class Analysis:
    records: List[dict] = field(default_factory=list)  # one per number: metric, variant, chunk, value, texts ...
    # Of each variant after the first, per chunk and retrieval metric: its value minus the first's, paired.
    differences: List[dict] = field(default_factory=list)
    coords: Dict[str, np.ndarray] = field(default_factory=dict)  # variant -> [N, 2] on the first two PCs (all chunks)
    explained: Dict[str, List[float]] = field(default_factory=dict)  # variant -> the two PCs' shares of the variance

    def metrics(self) -> Dict[str, float]:
        """Flat names for W&B summaries: eval/<metric>/<variant>/<chunk>, geometry/<metric>/<variant>/<chunk>;
        an interval's ends under .../low and .../high, chance as the variant "chance", a difference as
        the variant "<variant>-<first>"."""
        out = {}
        for r in self.records + self.differences:
            variant = f"{r['variant']}-{r['minus']}" if "minus" in r else r["variant"]
            name = f"{'eval' if r['metric'] in RETRIEVAL else 'geometry'}/{r['metric']}/{variant}/{r['chunk']}"
            out[name] = r["value"]
            if r.get("interval"):
                out[f"{name}/low"], out[f"{name}/high"] = r["interval"]
            if "chance" in r:
                out[f"eval/{r['metric']}/chance/{r['chunk']}"] = r["chance"]
        return out

    def value(self, metric: str, variant: str, chunk: str = "all") -> Optional[float]:
        return next((r["value"] for r in self.records if (r["metric"], r["variant"], r["chunk"]) == (metric, variant, chunk)), None)


def analyze(vectors: Dict[str, np.ndarray], chunk_labels: Sequence[str], groups: Optional[Sequence] = None,
            partners: Optional[Sequence[Optional[int]]] = None, boot: Optional[bootstrap.Bootstrap] = None) -> Analysis:
    """vectors: variant -> [N, C*H] for the same N texts; chunk_labels: the C chunks' labels.

    With groups, retrieval (of each text's partner when partners are given, else of its group) with
    its chance level and, given boot, an interval from resampled queries; the margin; anisotropy then
    averages over texts of different groups, else over all pairs.
    """
    out = Analysis()
    n_chunks = len(chunk_labels)
    rel = None if groups is None else retrieval.relevance(groups, partners)
    chance = retrieval.chance(rel) if rel is not None and rel.any() else None
    per_query = {}  # (variant, chunk) -> {metric: [Q] each query's value}
    counts = None if chance is None or boot is None else boot.counts(int(rel.any(1).sum()))  # [B, Q], shared: paired

    def interval(values):
        return {} if counts is None else {"interval": boot.interval(bootstrap.mean(values, counts))}

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

            if chance is not None:
                sim = retrieval.cosine_matrix(part)  # [N, N]
                found = per_query[(variant, chunk)] = retrieval.per_query(sim, rel)
                for metric in PER_QUERY:
                    add(metric, float(found[metric].mean()), queries=len(found[metric]), chance=chance[metric],
                        **interval(found[metric]))
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
    first = next(iter(vectors))
    for (variant, chunk), found in per_query.items():
        if variant != first:
            for metric in PER_QUERY:
                diff = found[metric] - per_query[(first, chunk)][metric]  # [Q] paired: the same queries
                out.differences.append({"metric": metric, "variant": variant, "minus": first, "chunk": chunk,
                                        "value": float(diff.mean())} | interval(diff))
    return out
