"""Summaries of the focused-contrast probe (``probe_focused_contrast.py``): DIR/planted.jsonl and
DIR/clean.jsonl -> DIR/summary.json and a printed report.

    python tests/benchmarks/probe_focused_summary.py DIR
"""
import json
import math
import sys
from collections import defaultdict

import numpy as np

D = sys.argv[1].rstrip("/") + "/" if len(sys.argv) > 1 else "./"


def load(name):
    return [json.loads(line) for line in open(D + name)]


planted = load("planted.jsonl")
clean = load("clean.jsonl")

ART = {"natf.cnn.adam-c1-frame-20-s13.npz": "frame_natf", "natd.cnn.adam-c4-frame-20-s12.npz":
       "frame_natd", "natfm.resnet.adam-c4-text-20-s13.npz": "text_natfm",
       "fashion-c3-square-10-s57.npz": "square_fashion"}


def metrics(r):
    out = {"contrast": r["contrast"], "phi_rel": r["phi_rel"], "phi_in": r["phi_in"],
           "randomness": r["randomness"]}
    for v in ("rel", "in"):
        f = r["focus"][v]
        for k in ("phi_relf", "phi_relf_norm", "phi_in_woD", "fc", "fc_norm", "fc_cal",
                  "fc_norm_cal"):
            out[f"{v}.{k}"] = f[k]
        out[f"{v}.z_phi_relf"] = f["null_phi_relf"]["z"]
        out[f"{v}.rank_phi_relf"] = f["null_phi_relf"]["rank"]
        out[f"{v}.null_phi_relf_mean"] = math.exp(f["null_phi_relf"]["null_mean"])
        out[f"{v}.z_fc"] = f["null_fc"]["z"]
        out[f"{v}.z_fc_norm"] = f["null_fc_norm"]["z"]
        out[f"{v}.z_phi_relf_norm"] = f["null_phi_relf_norm"]["z"]
    return out


def dist(vals):
    v = np.asarray([x for x in vals if x is not None and not (isinstance(x, float) and
                                                              math.isnan(x))], float)
    if not len(v):
        return None
    return {"n": int(len(v)), "min": float(v.min()), "p10": float(np.percentile(v, 10)),
            "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
            "max": float(v.max())}


groups = defaultdict(list)
for r in planted:
    a = ART[r["cache"]]
    if r["kind"] == "oracle":
        groups[f"oracle:{a}"].append(r)
    else:
        jac = r["planted_in_group"] / (r["size"] + r["n_planted"] - r["planted_in_group"])
        r["jaccard"] = jac
        groups[f"planted_cluster:{a}:{'rich' if jac >= 0.5 else 'other'}"].append(r)
for r in clean:
    model = r["cache"].split("-clean")[0]
    groups[f"clean:{model}"].append(r)
    groups["clean:all"].append(r)
groups["oracle:frame+text"] = groups["oracle:frame_natf"] + groups["oracle:frame_natd"] + \
    groups["oracle:text_natfm"]

keys = list(metrics(planted[0]).keys())
summary = {"groups": {g: {"n": len(rs), **{k: dist([metrics(r)[k] for r in rs]) for k in keys}}
                      for g, rs in sorted(groups.items())}}

# threshold question: for metrics oriented larger = more artefact-like
sep = {}
pos = groups["oracle:frame+text"]
neg = groups["clean:all"]
for k in keys:
    if k.startswith(("phi", "rel.phi", "in.phi", "rel.null", "in.null", "randomness")):
        continue
    mp = min(metrics(r)[k] for r in pos)
    mn = max(metrics(r)[k] for r in neg)
    # best threshold = midpoint; margin each side = (mp - mn)/2
    n_neg_above = {t: sum(metrics(r)[k] >= t for r in neg) for t in ()}
    sep[k] = {"min_frame_text_oracle": mp, "max_clean_cluster": mn, "gap": mp - mn,
              "both_margins_ge_1": bool(mp - mn >= 2.0),
              "midpoint": (mp + mn) / 2,
              "oracle_by_artefact_min": {a: min(metrics(r)[k] for r in groups[f"oracle:{a}"])
                                         for a in ("frame_natf", "frame_natd", "text_natfm",
                                                   "square_fashion")},
              "clean_p99": float(np.percentile([metrics(r)[k] for r in neg], 99)),
              "clean_top5": sorted((metrics(r)[k] for r in neg), reverse=True)[:5]}
summary["separation"] = sep

# the top clean clusters for the main candidates
top = {}
for k in ("in.fc", "rel.fc", "in.fc_norm", "in.z_fc", "in.fc_cal"):
    rs = sorted(neg, key=lambda r: -metrics(r)[k])[:6]
    top[k] = [{"cache": r["cache"], "class": r["class"], "draw": r["draw"], "id": r["id"],
               "fraction": r["fraction"], "value": metrics(r)[k],
               "phi_relf": r["focus"][k.split(".")[0]]["phi_relf"],
               "phi_in_woD": r["focus"][k.split(".")[0]]["phi_in_woD"],
               "contrast": r["contrast"], "randomness": r["randomness"]} for r in rs]
summary["top_clean"] = top

# CPU per class
cpu = defaultdict(dict)
for r in planted + clean:
    cpu[(r["cache"], r["class"], r["draw"])] = r["cpu_class"]
c = list(cpu.values())
summary["cpu_per_class"] = {
    "analysis_s": dist([x["analysis"] for x in c]),
    "focus_and_null_s": dist([x["focus_and_null"] for x in c]),
    "focus_and_null_per_group_s": dist([x["focus_and_null"] / max(1, x["n_groups"]) for x in c]),
    "groups_per_class": dist([x["n_groups"] for x in c]),
    "note": "process CPU time (single thread, nice 15, 2-core box under load); focus+null = "
            "per group 6 kNN graphs (2 footprints x {raw focused, renormalised focused, masked "
            "inputs}) + 20 null subsets x 6 graphs per distinct group size"}
with open(D + "summary.json", "w") as out:
    json.dump(summary, out, indent=1)

def fmt(d):
    return "—" if d is None else f"{d['min']:.3f}/{d['p10']:.3f}/{d['median']:.3f}/{d['max']:.3f}"


show = ["contrast", "phi_rel", "phi_in", "randomness", "rel.phi_relf", "rel.phi_in_woD", "rel.fc",
        "rel.z_phi_relf", "rel.z_fc", "in.phi_relf", "in.phi_in_woD", "in.fc", "in.fc_norm",
        "in.fc_cal", "in.z_phi_relf", "in.z_fc", "in.null_phi_relf_mean"]
for g, s in summary["groups"].items():
    print(f"\n== {g} (n={s['n']})  min/p10/median/max")
    for k in show:
        print(f"   {k:22s} {fmt(s[k])}")
print("\n== separation (frame+text oracle min vs clean max; need gap >= 2)")
for k, v in sep.items():
    print(f"   {k:18s} oracle_min {v['min_frame_text_oracle']:8.3f} clean_max "
          f"{v['max_clean_cluster']:8.3f} gap {v['gap']:8.3f}  per-art "
          + " ".join(f"{a}={x:.2f}" for a, x in v["oracle_by_artefact_min"].items())
          + f"  clean_top5 {[round(x, 2) for x in v['clean_top5']]}")
print("\n== top clean")
for k, rs in top.items():
    print(k)
    for r in rs:
        print("   ", r)
print("\n== cpu", json.dumps(summary["cpu_per_class"], indent=1))
