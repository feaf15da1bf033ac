#!/usr/bin/env bash
# Differential check of policy verdicts against Cilium's own policy engine
# (v1.20.2): random CNP/CCNP/KNP documents and flows go through Cilium's
# parsers, policy repository and LookupFlow, and through this SDK's
# policy package (compiled map + datapath.LookupPolicy, cross-checked with
# the direct evaluation); every verdict, and every validation failure,
# must agree. Needs network access to the Go module proxy the first time
# (Cilium's dependencies; about 2 minutes to build). Not run by CI.
#
#   ./run.sh [SEEDS] [CASES_PER_SEED]
set -euo pipefail
cd "$(dirname "$0")"
seeds=${1:-4}
cases=${2:-5000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd cilium && go mod tidy >/dev/null && go build -o "$work/cilium" .)
(cd nodeplane && go mod tidy >/dev/null && go build -o "$work/nodeplane" .)
for seed in $(seq 1 "$seeds"); do
	python3 gen.py "$seed" "$cases" >"$work/cases.jsonl"
	"$work/cilium" <"$work/cases.jsonl" >"$work/cilium.jsonl"
	"$work/nodeplane" <"$work/cases.jsonl" >"$work/nodeplane.jsonl"
	python3 cmp.py "$work/cases.jsonl" "$work/cilium.jsonl" "$work/nodeplane.jsonl" 3
done
# Validation parity: each mutation must be rejected by both or by neither,
# except what this SDK rejects as "not supported yet" (L7 rules, toFQDNs,
# authentication, host policies), which Cilium enforces and accepts.
for i in $(seq 0 59); do python3 gen_invalid.py "$i" "$i"; done >"$work/invalid.jsonl"
"$work/cilium" <"$work/invalid.jsonl" >"$work/cilium-invalid.jsonl"
"$work/nodeplane" <"$work/invalid.jsonl" >"$work/nodeplane-invalid.jsonl"
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
cs = [json.loads(l) for l in open(w + "/invalid.jsonl")]
a = [json.loads(l) for l in open(w + "/cilium-invalid.jsonl")]
b = [json.loads(l) for l in open(w + "/nodeplane-invalid.jsonl")]
bad = closed = 0
for c, x, y in zip(cs, a, b):
    if not x.get("err") and "not supported yet" in y.get("err", ""):
        closed += 1
        continue
    if bool(x.get("err")) != bool(y.get("err")) or not x.get("err") and x != y:
        bad += 1
        print("validation differs:", c["name"], x, y)
print(len(cs), "validation cases,", bad, "differ,", closed, "rejected as not supported yet")
sys.exit(1 if bad else 0)
PY
