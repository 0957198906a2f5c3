"""Evaluate the Clever-Hans score on planted artefacts (detection, false flags, suspect P/R).

The table of docs/verdict.md and the README was made with (25 models, one torch thread;
about 20 min, fashion 15–18 of them; two replicates can run side by side on 2 cores):

    python tests/benchmarks/eval_clever_hans.py --out runs/eval-clever-hans --all

(``--only fashion`` and ``--only digits`` split it into two processes with the same models;
``--table-only --out DIR1 --also DIR2`` prints their joint table.)

Other uses:

    ... --out DIR --rescore             # rescore the cached maps (after changing the rule)
    ... --out DIR --rescore --pipeline my-flags.yaml   # e.g. other thresholds in flags:
    ... --out DIR --all --merge --only NAME,...        # add settings to an earlier results.json
    ... --out DIR --table-only          # print the table of DIR/results.json
    ... --out DIR --table-only --also DIR2 DIR3   # one table and summary over several runs
    ... --out DIR --quick               # 1 poisoned + 1 clean model per dataset
    ... --out DIR2 --all --replicate 3  # a replicate: every seed + 3 (data split, weights, batches)

For every setting the script builds a dataset, plants an artefact into a fraction ``p`` of one
class (train and test alike), trains a model on the train split, explains the test split of every
class (digits: the whole data set) with ``spray.lrp.attribute`` (true-class logit,
``epsilon-plus-flat``), and scores every class with spray's own analysis
(``spray.analysis.preprocess.preprocess`` → ``spray.analysis.analyze.analyze`` →
``spray.verdict.score.clever_hans_score``) and the ``spray-default`` preset (``--pipeline`` to
change it). The cache does not record ``--digits-split``: use another ``--out`` for each.
Clean models (no artefact) measure false flags. On one machine every model is a function of its
setting alone (the seed fixes the data split, the weights' initialization and the batches; the
thread count is fixed by ``--threads``), so a setting gives the same maps whether it runs alone
or after others. Built again on another machine (other CPU kernels, other rounding) the same
setting trains another model: the cache is the record of a round, and a rebuilt setting is a
new replicate (docs/verdict-eval.md, "Results: window cuts on rebuilt models").

**Reliance** (ground truth for "Clever Hans", measured without relevance): a planted artefact
is a Clever Hans only if the model uses it. For every trained model and artefact kind the script
stamps the artefact on the test images of the other classes and counts how many the model then
predicts as the class (*flips*); the table puts the poisoned model's flips to the planted class
next to the mean of the clean models' (same artefact, same class).

* **Fashion-MNIST** (Debian ``dataset-fashion-mnist``): 28×28, the first ``--train-per-class``
  training images per class (default 2500) and the first ``--test-per-class`` (default 1000)
  test images per class; CNN with 3 conv (with BatchNorm) + 2 dense layers, ``--fashion-epochs``
  (3) epochs of Adam with a one-cycle learning rate (batches of 256): test accuracy ≈ 0.90, a
  model that has learnt its task (and a shortcut, if the data offers one).
* **digits** (scikit-learn): upsampled to 32×32, split 50/50 per class; the demo CNN (with
  BatchNorm), 12 epochs, trained on one half. The whole poisoned data set is explained and
  scored (≈ 180 samples per class, as ``spray run`` analyses a data set; ``--digits-split
  test`` scores only the other half, ≈ 90 per class, too few for k = 5 kNN graphs to resolve
  a group of 9); accuracy and reliance are measured on the test half.

Artefacts: ``square`` (bright square, top-left corner), ``topline`` (1-px bright top row, like a
padding border), ``checker`` (small checkerboard texture patch, top-right).

* **RGB scenes** (``GEN.ARCH.RECIPE`` as dataset, e.g. ``natf.resnet.sgd:4:frame:0.1:0``):
  objects on photographs, merged sub-population labels, the artefacts ``text``, ``frame``,
  ``patch``, ``logo`` and ``stripes`` (``eval_data.py``), CNN, ResNet-style and ViT models with
  two recipes (``eval_models.py``); docs/verdict-eval.md describes them and the held-out
  protocol (``--settings-file``, ``--build-only``, ``--cache-from``; ``--draws`` also writes
  ``margin.md``, ``eval_summary.py``).

Outputs in ``--out``: ``cache/<setting>.npz`` (relevance maps, inputs, ground truth: the slow
part, reused by ``--rescore``), ``results.json`` (every class of every setting) and
``table.md`` (the table of docs/verdict.md). ``--rescore`` takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_data import FASHION_DIR, class_names, load_digits, load_fashion  # noqa: E402
from eval_data import grey_mask as artefact_mask
from eval_data import plant_grey as plant
from eval_summary import detected, gate

# (dataset, planted class, artefact, fraction, seed); artefact None = clean model
SETTINGS = [
    ("fashion", None, None, 0.0, 0), ("fashion", 6, "square", 0.1, 0),
    ("fashion", None, None, 0.0, 1), ("fashion", 6, "topline", 0.1, 0),
    ("fashion", 8, "square", 0.1, 0), ("fashion", 6, "checker", 0.2, 0),
    ("fashion", 6, "square", 0.3, 0), ("fashion", 1, "topline", 0.1, 0),
    ("digits", 3, "square", 0.3, 0), ("digits", 3, "square", 0.1, 0),
    ("digits", 7, "topline", 0.1, 0), ("digits", 5, "checker", 0.2, 0),
    ("digits", 0, "square", 0.05, 0), ("digits", 8, "topline", 0.3, 0),
    ("digits", 2, "checker", 0.3, 0),
    ("digits", None, None, 0.0, 0), ("digits", None, None, 0.0, 1),
    ("digits", None, None, 0.0, 2),
]
# more settings for --all (part of the committed table)
EXTRA = [
    ("fashion", 4, "square", 0.2, 0), ("fashion", 6, "square", 0.05, 0),
    ("fashion", None, None, 0.0, 2), ("fashion", 7, "checker", 0.3, 0),
    ("fashion", 3, "topline", 0.05, 0), ("fashion", 6, "topline", 0.2, 0),
    ("fashion", 6, "checker", 0.3, 0),
]
QUICK = [("fashion", 6, "square", 0.1, 0), ("fashion", None, None, 0.0, 0),
         ("digits", 3, "square", 0.3, 0), ("digits", None, None, 0.0, 0)]


def parse_setting(text: str) -> tuple:
    """``DS:CLASS:ARTEFACT:P:SEED`` (``clean`` as artefact: a clean model) as a setting tuple."""
    ds, c, art, p, seed = text.split(":")
    if art == "clean":
        return (ds, None, None, 0.0, int(seed))
    return (ds, int(c), art, float(p), int(seed))


def read_settings(path: Path) -> list[str]:
    """The settings listed in a file, one ``DS:CLASS:ARTEFACT:P:SEED`` a line."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def setting_name(s) -> str:
    ds, c, art, p, seed = s
    return f"{ds}-clean-s{seed}" if art is None else f"{ds}-c{c}-{art}-{int(round(p * 100))}-s{seed}"


# ------------------------------------------------------------------------------ data

def fashion_model() -> nn.Module:
    """3 conv (with BatchNorm) + 2 dense layers; ~0.90 test accuracy after 3 one-cycle epochs."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


def build(ds: str, seed: int) -> nn.Module:
    """The untrained model of a dataset, its initialization seeded by ``seed`` (and nothing else:
    a setting's model does not depend on which settings ran before it in the process)."""
    from spray.cli.demo import build_model

    torch.manual_seed(seed)
    return fashion_model() if ds == "fashion" else build_model()


def train(ds: str, x: np.ndarray, y: np.ndarray, seed: int, args) -> nn.Module:
    """Fashion-MNIST: Adam with a one-cycle learning rate (batches of 256), converges in a few
    epochs on CPU; digits: the demo's training (12 epochs). Both with :func:`spray.cli.demo.fit`."""
    from spray.cli.demo import fit

    model = build(ds, seed)
    if ds == "fashion":
        return fit(model, x, y, args.fashion_epochs, seed, batch=256, lr=4e-3, one_cycle=True)
    return fit(model, x, y, 12, seed)


ARTEFACTS = ("square", "topline", "checker")
RELIANCE_MIN = 0.01   # flip rate above the clean models' from which a model relies on an artefact


def flip_rates(model: nn.Module, x: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """Reliance on an artefact, measured by intervention (no relevance involved).

    For every class c: the share of test images of the *other* classes, not predicted as c, that
    the model predicts as c once the artefact ``kind`` is stamped on them. A model that learnt
    "artefact ⇒ c" turns some of them; a model that ignores the artefact turns none.
    """
    with torch.no_grad():
        before = np.concatenate([model(torch.as_tensor(x[i:i + 1000])).argmax(1).numpy()
                                 for i in range(0, len(x), 1000)])
        stamped = plant(x, kind)
        after = np.concatenate([model(torch.as_tensor(stamped[i:i + 1000])).argmax(1).numpy()
                                for i in range(0, len(x), 1000)])
    rates = np.zeros(int(y.max()) + 1)
    for c in range(len(rates)):
        pool = (y != c) & (before != c)
        rates[c] = float((after[pool] == c).mean()) if pool.any() else 0.0
    return rates


def collect(setting, args) -> dict:
    """Train the model of a setting and explain its test split: arrays for the cache."""
    from spray.lrp import attribute

    ds, planted, art, p, seed = setting
    if "." in ds:   # an RGB scene generator, an architecture and a recipe (eval_models)
        from eval_models import collect_scenes

        return collect_scenes(setting, args)
    rng = np.random.default_rng(1000 + seed)
    if ds == "fashion":
        x_tr, y_tr, x_te, y_te = load_fashion(args.train_per_class, args.test_per_class)
    else:
        x_tr, y_tr, x_te, y_te = load_digits(rng)
    poisoned_tr = np.zeros(len(y_tr), dtype=bool)
    poisoned_te = np.zeros(len(y_te), dtype=bool)
    clean_te = x_te.copy()
    if art is not None:
        for xs, ys, mark in ((x_tr, y_tr, poisoned_tr), (x_te, y_te, poisoned_te)):
            members = np.flatnonzero(ys == planted)
            chosen = np.sort(rng.choice(members, size=max(1, int(round(p * len(members)))),
                                        replace=False))
            xs[chosen] = plant(xs[chosen], art)
            mark[chosen] = True
    t0 = time.perf_counter()
    model = train(ds, x_tr, y_tr, seed, args)
    t_train = time.perf_counter() - t0
    # what is explained and scored: the test split, or (digits by default) the whole poisoned
    # data set, training split included, as `spray run` analyses a data set
    if ds == "digits" and args.digits_split == "all":
        x_ex, y_ex = np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
        poisoned = np.concatenate([poisoned_tr, poisoned_te])
    else:
        x_ex, y_ex, poisoned = x_te, y_te, poisoned_te
    is_test = np.arange(len(y_ex)) >= len(y_ex) - len(y_te)
    rel, logits = [], []
    t0 = time.perf_counter()
    for start in range(0, len(x_ex), 500):
        xb = torch.as_tensor(x_ex[start:start + 500])
        yb = torch.as_tensor(y_ex[start:start + 500])
        with torch.no_grad():
            logits.append(model(xb).numpy())
        rel.append(attribute(model, xb, yb, composite=args.composite).detach().numpy()[:, 0])
    t_lrp = time.perf_counter() - t0
    pred = np.concatenate(logits).argmax(1)
    # reliance by intervention, on the test images as the model saw them without any artefact
    flips = np.stack([flip_rates(model, clean_te, y_te, kind) for kind in ARTEFACTS])
    return {"relevance": np.concatenate(rel).astype(np.float32), "inputs": x_ex[:, 0],
            "flip_rates": flips, "flip_kinds": np.array(ARTEFACTS),
            "labels": y_ex, "prediction": pred, "poisoned": poisoned, "is_test": is_test,
            "accuracy": float((pred[is_test] == y_te).mean()), "train_seconds": t_train,
            "lrp_seconds": t_lrp, "model": model}


# ------------------------------------------------------------------------------ scoring

def edge_features(inputs: np.ndarray, pipe: dict) -> np.ndarray | None:
    """The inputs' edge energy preprocessed like them, when the rule weighs it (else None)."""
    if not (pipe.get("flags") or {}).get("edge_randomness_weight"):
        return None
    from spray.analysis.preprocess import edge_energy, preprocess

    return preprocess(edge_energy(inputs), pipe["preprocess"])


def kept_model(setting, weights: Path, channels: int) -> nn.Module:
    """A setting's model rebuilt from the weights ``--keep-models`` wrote, in eval mode."""
    ds, _, _, _, seed = setting
    if "." in ds:
        import eval_models
        from eval_data import GENERATORS

        gen, arch, _ = ds.split(".")
        model = eval_models.build(arch, GENERATORS[gen].n_classes(), channels, seed)
    else:
        model = build(ds, seed)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def tested_model(setting, cache: Path, data: dict, pipe: dict,
                 built: nn.Module | None = None) -> nn.Module | None:
    """The model of a setting when the pipeline's transplant test needs it: the one just
    ``built``, else the weights ``--keep-models`` kept next to the cache (refused unless they
    are the ones the cache was built with); None when the test is off."""
    if not (pipe.get("flags") or {}).get("transplant_pairs"):
        return None
    if built is not None:
        return built.eval()
    weights = cache.with_suffix(".pt")
    if not weights.is_file():
        raise SystemExit(f"{weights}: no kept weights (build with --keep-models): the "
                         "transplant test needs the model")
    if "weights_digest" in data and str(data["weights_digest"]) != _digest(weights):
        raise SystemExit(f"{weights}: not the weights {cache.name} was built with")
    return kept_model(setting, weights, 1 if data["inputs"].ndim == 3 else
                      data["inputs"].shape[1])


def model_test_of(model: nn.Module | None, data: dict, sel: np.ndarray, c: int, pipe: dict):
    """The transplant test's inputs for class ``c`` (rows ``sel``) as the run makes them
    (``spray.run.tasks.model_test``): ``4 × transplant_pairs`` images of the other classes of
    the same samples, drawn with the same seed; None without a model or with the test off."""
    from spray.verdict.transplant import ModelTest, target_rows

    flags = pipe.get("flags") or {}
    pairs = int(flags.get("transplant_pairs") or 0)
    if model is None or not pairs:
        return None
    x = data["inputs"] if data["inputs"].ndim == 4 else data["inputs"][:, None]

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.as_tensor(batch, dtype=torch.float32)).argmax(1).numpy()

    pick = target_rows(data["labels"], c, pairs, int(flags.get("seed") or 0))
    return ModelTest(predict, lambda rows: x[sel[rows]], lambda rows: data["relevance"][sel[rows]],
                     x[pick], c)


def score_setting(setting, data, pipe, model: nn.Module | None = None) -> list[dict]:
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.skill import chance_test, learnt, max_chance_p
    from spray.verdict.patterns import InputPatterns
    from spray.verdict.score import clever_hans_score

    ds, planted, art, p, seed = setting
    rows = []
    kinds = [str(k) for k in data.get("flip_kinds", ARTEFACTS)]
    # what the gate asks first: does the model beat chance on the samples it analyses
    skill = chance_test(data["labels"], data["prediction"])
    refused = learnt(skill, max_chance_p(pipe.get("health"))) is False
    for c in np.unique(data["labels"]).tolist():
        sel = np.flatnonzero(data["labels"] == c)
        test = sel[data["is_test"][sel]] if "is_test" in data else sel   # accuracy: test split
        maps, inputs = data["relevance"][sel], data["inputs"][sel]
        t0 = time.perf_counter()
        feats = preprocess(maps, pipe["preprocess"])
        in_feats = preprocess(inputs, pipe["preprocess"])
        edges = edge_features(inputs, pipe)
        result = analyze(feats, pipeline=pipe, embed=False)
        more = {} if edges is None else {"edge_features": edges}
        verdict = clever_hans_score(result, in_feats, pipe, features=feats, **more,
                                    patterns=InputPatterns.of(inputs, pipe["preprocess"],
                                                              maps=maps),
                                    model_test=model_test_of(model, data, sel, c, pipe))
        seconds = time.perf_counter() - t0
        truth = data["poisoned"][sel]
        row = {"setting": setting_name(setting), "dataset": ds, "artefact": art, "fraction": p,
               "seed": seed, "class": c, "planted": planted == c and art is not None,
               "n": int(len(sel)), "n_poisoned": int(truth.sum()), "score": verdict["score"],
               "flagged": verdict["flagged"], "n_clusters": int(result.n_clusters),
               "seconds": round(seconds, 3),
               "accuracy": float((data["prediction"][test] == c).mean()),
               "model_kappa": skill["kappa"], "model_p": skill["p_value"], "refused": refused,
               "evidence": {k: verdict.get(k) for k in ("contrast", "null", "concentration",
                                                        "size_prior") if k in verdict}}
        if "flip_rates" in data:
            # reliance by intervention: other-class images turned to this class by each artefact
            row["flip_rates"] = {kind: float(data["flip_rates"][i, c])
                                 for i, kind in enumerate(kinds)}
        if art is not None and truth.any():
            # how much the model attends to the artefact: share of |R| on it, poisoned maps
            a = np.abs(maps[truth]).reshape(int(truth.sum()), -1)
            if "artefact_mask" in data:   # per sample (RGB scenes: the artefact's footprint)
                mask = data["artefact_mask"][sel][truth].reshape(len(a), -1)
            else:
                mask = np.broadcast_to(artefact_mask(art, *maps.shape[-2:]).ravel(), a.shape)
            row["artefact_share"] = float(np.mean((a * mask).sum(1) / np.maximum(
                a.sum(1), 1e-12)))
        cand = verdict.get("suspect_cluster")
        if cand is None:
            cand = verdict.get("candidate_cluster")
        if cand in (verdict.get("not_followed") or []):   # the gate's best cluster instead
            kept = [cl for cl in verdict["clusters"] if cl.get("score") is not None
                    and cl["id"] not in verdict["not_followed"]]
            cand = max(kept, key=lambda cl: cl["score"])["id"] if kept else None
        reported = verdict.get("suspect_clusters") or ([] if cand is None else [cand])
        if reported and truth.any():
            # the reported suspects (what the user sees), else the best candidate
            row["precision"], row["recall"] = overlap(verdict["labels"], reported, truth)
        row["clusters"] = [{k: v for k, v in cl.items() if k != "members"}
                           for cl in verdict["clusters"]]
        tested = {str(cl["id"]): {"decision": cl.get("decision"), "tests": cl["transplant"]}
                  for cl in verdict["clusters"] if cl.get("transplant") is not None}
        if verdict.get("gate_score") is not None:   # with the transplant test: the gate's
            row["gate_score"] = verdict["gate_score"]  # score (spray.verdict.score.gate_score)
        if verdict.get("not_followed") is not None:   # the transplant test of the suspects
            row["transplant"] = tested
            row["not_followed"] = verdict["not_followed"]
        if any(cl.get("followed_below") for cl in verdict["clusters"]
               if cl["id"] in (verdict.get("suspect_clusters") or [])):
            row["followed_below"] = True     # flagged below the threshold: the model follows it
        if verdict.get("near_tested"):
            row["near_tested"] = [_overlap(t, truth) for t in verdict["near_tested"]]
        best = next((cl for cl in verdict["clusters"] if cl["id"] == cand), {})
        if verdict.get("splits"):
            row["splits"] = verdict["splits"]
        if best.get("score_from_k"):
            row["score_from_k"] = best["score_from_k"]["n_clusters"]
        rows.append(row)
    ranked = sorted(rows, key=lambda r: -r["score"])
    for i, r in enumerate(ranked):
        r["rank"] = i + 1
    return rows


def overlap(labels, clusters: list[int], truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the samples in ``clusters`` (with any split-off half: every
    sample whose label is one of them) against the stamped samples ``truth`` (any)."""
    members = np.isin(labels, clusters)
    hit = int((members & truth).sum())
    return hit / max(1, int(members.sum())), hit / int(truth.sum())


def _overlap(record: dict, truth: np.ndarray) -> dict:
    """A candidate tested below the threshold (``near_tested``) without its members, with its
    precision and recall against the stamped samples (when the class has any)."""
    out = {k: v for k, v in record.items() if k != "members"}
    if truth.any():
        hit = int(truth[record["members"]].sum())
        out["precision"] = round(hit / max(1, len(record["members"])), 4)
        out["recall"] = round(hit / int(truth.sum()), 4)
    return out


PER_SAMPLE = ("relevance", "inputs", "labels", "prediction", "poisoned", "is_test",
              "artefact_mask", "types")


def draw(data: dict, size: int, seed: int) -> dict:
    """``size`` random samples of every class (all of a smaller class) of a setting's arrays."""
    rng = np.random.default_rng(seed)
    idx = np.sort(np.concatenate([
        rng.choice(members, size=min(size, len(members)), replace=False)
        for members in (np.flatnonzero(data["labels"] == c) for c in np.unique(data["labels"]))]))
    return {k: (v[idx] if k in PER_SAMPLE else v) for k, v in data.items()}


def score_draws(setting, data: dict, pipe: dict, draws: int, size: int,
                model: nn.Module | None = None) -> list[dict]:
    """Score ``draws`` random draws of ``size`` samples per class (seeds 0 … draws − 1)."""
    rows = []
    for d in range(draws):
        rs = score_setting(setting, draw(data, size, seed=10_000 + d), pipe, model)
        for r in rs:
            r["draw"] = d
            r.pop("clusters", None)
        pl = next((r for r in rs if r["planted"]), None)
        others = max(gate(r) for r in rs if not r["planted"])
        print(f"{setting_name(setting)} draw {d}: "
              + (f"planted {gate(pl):.2f} P/R {pl.get('precision', 0):.2f}/"
                 f"{pl.get('recall', 0):.2f}; " if pl else "")
              + f"highest other class {others:.2f}"
              + (f"; the gate refuses the run (model kappa {rs[0]['model_kappa']:.3f}, p "
                 f"{rs[0]['model_p']:.2g})" if rs[0]["refused"] else ""), flush=True)
        rows.extend(rs)
    return rows


def draw_records(rows: list[dict]) -> list[dict]:
    """One record per setting and draw: the planted class's score and P/R, the highest score
    of the other classes (what docs/verdict.md's tables are made from)."""
    out = []
    for (name, d) in dict.fromkeys((r["setting"], r["draw"]) for r in rows):
        rs = [r for r in rows if r["setting"] == name and r["draw"] == d]
        pl = next((r for r in rs if r["planted"]), None)
        top = max((r for r in rs if not r["planted"]), key=lambda r: gate(r))
        rec = {"setting": name, "draw": d, "highest_other": gate(top),
               "n_other": len(rs) - (pl is not None),
               "highest_other_class": top["class"], "seconds": sum(r["seconds"] for r in rs),
               "refused": bool(rs[0].get("refused")), "model_kappa": rs[0].get("model_kappa")}
        if pl is not None:
            rec.update(planted_score=gate(pl), precision=pl.get("precision"),
                       recall=pl.get("recall"), n_planted=pl["n_poisoned"], n_class=pl["n"])
            if pl.get("followed_below"):
                rec["followed_below"] = True
        out.append(rec)
    return out


def draws_summary(rows: list[dict], threshold: float) -> str:
    """Per setting: detections over the draws, planted scores, highest other score."""
    lines = ["| setting | draws | detected, P/R ≥ 0.9 | planted scores (min–max) | highest other "
             "class |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == name]
        pl = [r for r in rs if r["planted"]]
        det = sum(detected(r, threshold) for r in pl)
        n_draws = len({r["draw"] for r in rs})
        other = max(gate(r) for r in rs if not r["planted"])
        lines.append(f"| {name} | {n_draws} | {f'{det}/{len(pl)}' if pl else '—'} | "
                     f"{_fmt_range([gate(r) for r in pl])} | {other:.2f} |")
    return "\n".join(lines)


def _fmt_range(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if abs(hi - lo) < 10 ** -digits else f"{lo:.{digits}f}–{hi:.{digits}f}"


def _flips(row, kind=None) -> float | None:
    rates = row.get("flip_rates")
    return None if rates is None else rates[kind or row["artefact"]]


def clean_flips(rows: list[dict], dataset: str, kind: str, c: int) -> float | None:
    """Mean flip rate of ``kind`` to class ``c`` over the clean models of ``dataset``."""
    values = [_flips(r, kind) for r in rows if r["artefact"] is None and r["dataset"] == dataset
              and r["class"] == c]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def table(rows: list[dict]) -> str:
    out = ["| dataset | planted class | artefact | p | acc | artefact share of abs(R) | "
           "flips to class (clean models) | score | rank | flagged | suspect precision / recall | "
           "other classes flagged |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_setting: dict[str, list[dict]] = {}
    order = sorted(rows, key=lambda r: (r["dataset"] != "fashion", r["artefact"] is None,
                                        r["setting"]))
    for r in order:
        by_setting.setdefault(r["setting"], []).append(r)
    for rs in by_setting.values():
        r0 = rs[0]
        names = class_names(r0["dataset"])
        acc = sum(r["accuracy"] * r["n"] for r in rs) / sum(r["n"] for r in rs)
        if r0["artefact"] is None:
            flagged = [names[r["class"]] for r in rs if r["flagged"]]
            top = max(rs, key=lambda r: r["score"])
            out.append(f"| {r0['dataset']} | clean (seed {r0['seed']}) | — | — | {acc:.2f} | — | — | "
                       f"max {top['score']:.2f} ({names[top['class']]}) | — | — | — | "
                       f"{', '.join(flagged) or 'none'} |")
            continue
        pl = next(r for r in rs if r["planted"])
        others = [names[r["class"]] for r in rs if r["flagged"] and not r["planted"]]
        pr = (f"{pl['precision']:.2f} / {pl['recall']:.2f}" if "precision" in pl else "—")
        flips, base = _flips(pl), clean_flips(rows, pl["dataset"], pl["artefact"], pl["class"])
        flip_text = "—" if flips is None else (
            f"{flips:.3f}" + ("" if base is None else f" ({base:.3f})"))
        out.append(f"| {r0['dataset']} | {names[pl['class']]} | {r0['artefact']} | "
                   f"{r0['fraction']:.2f} | {acc:.2f} | {pl.get('artefact_share', 0):.2f} | "
                   f"{flip_text} | {pl['score']:.2f} | {pl['rank']} | "
                   f"{'yes' if pl['flagged'] else 'no'} | {pr} | {', '.join(others) or 'none'} |")
    return "\n".join(out)


def _rank_corr(rows: list[dict], reliance) -> str:
    from scipy.stats import spearmanr

    pairs = [(r["score"], reliance(r)) for r in rows if reliance(r) is not None]
    if len(pairs) < 3:
        return "—"
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return f"{rho:.2f} (n = {len(pairs)})"


def _randomness_of_flagged(rows: list[dict], threshold: float) -> str:
    """Input randomness of the suspect clusters (score ≥ threshold) of flagged rows."""
    values = [c["input_randomness"] for r in rows if r["flagged"] for c in r.get("clusters", [])
              if c.get("score") is not None and c["score"] >= threshold
              and c.get("input_randomness") is not None]
    return f"{_fmt_range(values)} ({len(values)} clusters)" if values else "—"


def _split_count(rows: list[dict]) -> str:
    flagged = [r for r in rows if r["flagged"]]
    return f"{sum(bool(r.get('splits')) for r in flagged)}/{len(flagged)}"


def aggregate(rows: list[dict], threshold: float) -> str:
    planted = [r for r in rows if r["planted"]]
    strong = [r for r in planted if r["fraction"] >= 0.1]
    clean_checks = [r for r in rows if r["artefact"] is None]
    other_checks = [r for r in rows if r["artefact"] is not None and not r["planted"]]

    def rate(rs, key):
        return f"{sum(bool(r[key]) for r in rs)}/{len(rs)}" if rs else "—"

    attended = [r for r in planted if r.get("artefact_share", 0) >= 0.1]
    def reliance(r):   # flip rate above that of the clean models (same artefact and class)
        flips = _flips(r)
        if flips is None:
            return None
        return flips - (clean_flips(rows, r["dataset"], r["artefact"], r["class"]) or 0.0)

    relied = [r for r in strong if (reliance(r) or 0) >= RELIANCE_MIN]
    ignored = [r["setting"] for r in strong if r not in relied and reliance(r) is not None]
    relied_good = [r for r in relied if r["flagged"] and r.get("precision", 0) >= 0.8
                   and r.get("recall", 0) >= 0.8]
    cands = [c for r in rows for c in r.get("clusters", []) if "contrast" in c]
    skipped = sum(c.get("resampled") is False for c in cands)
    det = [r for r in strong if r["flagged"]]
    good = [r for r in det if r.get("precision", 0) >= 0.8 and r.get("recall", 0) >= 0.8]
    lines = [
        f"- detection (planted class flagged), all fractions: {rate(planted, 'flagged')}; "
        f"fractions ≥ 0.1: {rate(strong, 'flagged')}",
        f"- detected with suspect precision and recall ≥ 0.8 (p ≥ 0.1): {len(good)}/{len(strong)}",
        f"- p ≥ 0.1 and the model relies on the artefact (stamping it turns ≥ {RELIANCE_MIN:.0%} "
        f"more other-class images to the planted class than on the clean models): detected with P/R ≥ 0.8 in "
        f"{len(relied_good)}/{len(relied)}; the model does not rely on it: "
        f"{', '.join(ignored) or 'none'}",
        f"- Spearman correlation of the planted class's score with the model's reliance on the "
        f"artefact (all planted settings): {_rank_corr(planted, reliance)}",
        f"- detection where the model attends to the artefact (artefact share ≥ 0.1): "
        f"{rate(attended, 'flagged')}; where it does not: "
        f"{rate([r for r in planted if r not in attended], 'flagged')}",
        f"- mean suspect precision / recall over detections: "
        f"{np.mean([r['precision'] for r in planted if r['flagged']] or [np.nan]):.2f} / "
        f"{np.mean([r['recall'] for r in planted if r['flagged']] or [np.nan]):.2f}",
        f"- false flags, clean models: {rate(clean_checks, 'flagged')} class checks "
        f"(max score {max([r['score'] for r in clean_checks] or [0]):.2f})",
        f"- false flags, non-planted classes of poisoned models: {rate(other_checks, 'flagged')} "
        f"(max score {max([r['score'] for r in other_checks] or [0]):.2f})",
        f"- input randomness of the suspect clusters: planted classes "
        f"{_randomness_of_flagged([r for r in rows if r['planted']], threshold)}, other classes "
        f"{_randomness_of_flagged([r for r in rows if not r['planted']], threshold)}",
        f"- flagged classes whose suspect was split off an analysis cluster (bisect_clusters): "
        f"planted {_split_count([r for r in rows if r['planted']])}, other classes "
        f"{_split_count([r for r in rows if not r['planted']])}",
        f"- score time per class: median {np.median([r['seconds'] for r in rows]):.2f} s "
        f"(preprocess + analysis without t-SNE + score); candidates not resampled (they could "
        f"not change the class score): {skipped}/{len(cands)}",
    ]
    return "\n".join(lines)


def choose_settings(args, out: Path) -> list[tuple]:
    """The settings to run: ``--setting``/``--settings-file`` (a build lists them in
    ``settings.txt`` next to its cache; ``--rescore`` without settings reads it), else the
    built-in lists."""
    settings = QUICK if args.quick else SETTINGS + (EXTRA if args.all else [])
    listed = out / "settings.txt"   # the settings built into this cache (one per line)
    if args.settings_file:
        args.setting += read_settings(Path(args.settings_file))
    elif args.rescore and not args.setting and listed.is_file():
        args.setting = read_settings(listed)
    if args.setting:
        settings = [parse_setting(text) for text in args.setting]
        if not args.rescore:
            known = read_settings(listed) if listed.is_file() else []
            listed.write_text("".join(f"{t}\n" for t in dict.fromkeys(known + args.setting)))
    settings = [(ds, c, art, p, seed + args.replicate) for ds, c, art, p, seed in settings]
    settings = sorted(settings, key=lambda s: s[0] == "fashion")  # cheap settings first
    if args.only:
        keys = args.only.split(",")
        settings = [s for s in settings if any(k in setting_name(s) for k in keys)]
    return settings


def _commit() -> str | None:
    """The git commit of the spray that is imported (None outside a checkout)."""
    import subprocess

    import spray

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(spray.__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/eval-clever-hans")
    ap.add_argument("--rescore", action="store_true", help="only rescore cached settings")
    ap.add_argument("--keep-models", action="store_true",
                    help="also write each built model's weights (cache/<setting>.pt)")
    ap.add_argument("--quick", action="store_true", help="4 settings instead of all")
    ap.add_argument("--all", action="store_true", help="also the EXTRA settings")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of settings not run now from an earlier results.json")
    ap.add_argument("--table-only", action="store_true",
                    help="only print the table of an earlier results.json")
    ap.add_argument("--also", nargs="+", default=[], metavar="DIR",
                    help="with --table-only: add the results of these runs (e.g. replicates)")
    ap.add_argument("--only", help="comma-separated substrings of setting names to run")
    ap.add_argument("--setting", action="append", default=[], metavar="DS:CLASS:ARTEFACT:P:SEED",
                    help="run this setting instead of the lists (repeatable), e.g. "
                         "fashion:4:square:0.1:0; 'clean' as ARTEFACT for a clean model")
    ap.add_argument("--settings-file", metavar="FILE",
                    help="run the settings listed in FILE (one DS:CLASS:ARTEFACT:P:SEED a line, "
                         "'#' comments); --rescore without settings reads OUT/settings.txt")
    ap.add_argument("--cache-from", metavar="DIR",
                    help="read (and build) the cache and settings.txt in DIR instead of --out; "
                         "results go to --out (e.g. one cache scored by several rules)")
    ap.add_argument("--build-only", action="store_true",
                    help="train, explain and cache the settings without scoring them")
    ap.add_argument("--draws", type=int, default=0,
                    help="score this many random draws of --draw-size samples per class of each "
                         "cached setting (the same model, other samples) instead of all samples")
    ap.add_argument("--draw-size", type=int, default=300)
    ap.add_argument("--pipeline", default="spray-default")
    ap.add_argument("--composite", default="epsilon-plus-flat")
    ap.add_argument("--train-per-class", type=int, default=2500)
    ap.add_argument("--fashion-epochs", type=int, default=3)
    ap.add_argument("--test-per-class", type=int, default=1000)
    ap.add_argument("--digits-split", choices=("all", "test"), default="all",
                    help="digits: explain and score the whole data set (≈ 180 per class) or "
                         "only its test half (≈ 90)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; a model depends on its seed and this (tables: 1)")
    ap.add_argument("--replicate", type=int, default=0,
                    help="add this to every setting's seed: new data split, weights and batches")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from spray.config.presets import load_pipeline

    pipe = load_pipeline(args.pipeline)
    from spray.verdict.calibration import scoring_sections
    from spray.verdict.score import flag_params, flag_threshold

    threshold = float(flag_threshold(flag_params(pipe), pipe))
    out = Path(args.out)
    if args.table_only:
        dirs = [out, *map(Path, args.also)]
        if all((d / "draws.json").is_file() for d in dirs):   # the margin over draws
            from eval_summary import margin_table

            rows = [r for d in dirs for r in json.loads((d / "draws.json").read_text())]
            print(draws_summary(rows, threshold) + "\n\n" + margin_table(rows, threshold))
            return 0
        rows = [r for d in dirs for r in json.loads((d / "results.json").read_text())]
        print(table(rows) + "\n\n" + aggregate(rows, threshold))
        return 0
    store = Path(args.cache_from) if args.cache_from else out   # where cache/ lies
    (store / "cache").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    settings = choose_settings(args, store)
    if not args.build_only:   # which rule scored these results (verdict_calibration.py)
        (out / "rule.json").write_text(json.dumps(
            {"params": flag_params(pipe).model_dump(), "sections": scoring_sections(pipe),
             "commit": _commit()}, indent=1))
    if settings and any(not s[0].startswith(("digits", "natd")) for s in settings) \
            and not FASHION_DIR.is_dir() \
            and not args.rescore:
        print(f"Fashion-MNIST not found in {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
              file=sys.stderr)
        return 2
    rows = []
    if args.merge and (out / "results.json").is_file():
        now = {setting_name(s) for s in settings}
        rows = [r for r in json.loads((out / "results.json").read_text()) if r["setting"] not in now]
    for s in settings:
        name = setting_name(s)
        cache = store / "cache" / f"{name}.npz"
        built = None
        if cache.exists():
            data = dict(np.load(cache))
        elif args.rescore:
            continue
        else:
            data = collect(s, args)
            built = data.pop("model")
            if args.keep_models:    # the trained weights, for measures that need the model
                torch.save(built.state_dict(), cache.with_suffix(".pt"))
                data["weights_digest"] = np.array(_digest(cache.with_suffix(".pt")))
            np.savez_compressed(cache, **{k: (v.astype(np.float16) if k in ("relevance", "inputs")
                                              else v) for k, v in data.items()})
            print(f"{name}: trained (acc {data['accuracy']:.3f}, {data['train_seconds']:.0f} s), "
                  f"LRP {data['lrp_seconds']:.1f} s", flush=True)
        if args.build_only:
            continue
        data["relevance"] = data["relevance"].astype(np.float32)
        data["inputs"] = data["inputs"].astype(np.float32)
        model = tested_model(s, cache, data, pipe, built)
        if args.draws:
            rows.extend(score_draws(s, data, pipe, args.draws, args.draw_size, model))
            (out / "draws.json").write_text(json.dumps(rows, indent=1, default=float))
            continue
        rs = score_setting(s, data, pipe, model)
        pl = next((r for r in rs if r["planted"]), None)
        flagged = [r["class"] for r in rs if r["flagged"]]
        print(f"{name}: flagged {flagged}"
              + (f"; planted score {pl['score']:.2f} rank {pl['rank']} P/R "
                 f"{pl.get('precision', 0):.2f}/{pl.get('recall', 0):.2f}" if pl else
                 f"; max score {max(r['score'] for r in rs):.2f}"), flush=True)
        rows.extend(rs)
        (out / "results.json").write_text(json.dumps(rows, indent=1, default=float))
    if args.build_only:
        return 0
    if args.draws:
        (out / "draws_summary.json").write_text(json.dumps(
            {"threshold": threshold, "draw_size": args.draw_size, "pipeline": args.pipeline,
             "draws": draw_records(rows)}, indent=1))
        from eval_summary import margin_table

        margin = margin_table(rows, threshold)
        (out / "margin.md").write_text(margin + "\n")
        print(draws_summary(rows, threshold) + "\n\n" + margin)
        return 0
    text = table(rows) + "\n\n" + aggregate(rows, threshold) + "\n"
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
