import json, sys
cases = [json.loads(l) for l in open(sys.argv[1])]
a = [json.loads(l) for l in open(sys.argv[2])]
b = [json.loads(l) for l in open(sys.argv[3])]
bad = 0; errs = 0; both_err = 0
for i, (c, x, y) in enumerate(zip(cases, a, b)):
    if x.get("err") and y.get("err"):
        both_err += 1; continue
    if x != y:
        bad += 1
        if bad <= int(sys.argv[4] if len(sys.argv) > 4 else 5):
            print("=== case", i)
            print("from:", c["from"], "to:", c.get("to"), c.get("tocidr"), c["proto"], c["port"])
            for d in c["docs"]: print(d)
            print("cilium:", x)
            print("mine:  ", y)
print("total", len(cases), "mismatch", bad, "both-error", both_err)
