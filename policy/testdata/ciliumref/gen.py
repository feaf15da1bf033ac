import json, random, sys

R = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000

NS = ["prod", "dev"]
APPS = ["web", "db", "api"]

def pod_labels():
    ns = R.choice(NS)
    ls = ["k8s:app=" + R.choice(APPS), "k8s:io.kubernetes.pod.namespace=" + ns]
    r = R.random()
    if r < 0.85:
        ls.append("k8s:io.cilium.k8s.policy.cluster=default")
    elif r < 0.92:
        ls.append("k8s:io.cilium.k8s.policy.cluster=other")
    if R.random() < 0.5:
        ls.append("k8s:io.cilium.k8s.namespace.labels.team=" + ("a" if ns == "prod" else R.choice("ab")))
    if R.random() < 0.3:
        ls.append("k8s:tier=" + R.choice(["front", "back"]))
    if R.random() < 0.1:
        ls.append("container:role=" + R.choice(["x", "y"]))
    if R.random() < 0.03:
        ls.append("k8s:init=yes")
    return ",".join(ls)

RESERVED = ["reserved:host", "reserved:world", "reserved:world-ipv4", "reserved:world-ipv6", "reserved:remote-node",
            "reserved:kube-apiserver,reserved:remote-node", "reserved:health", "reserved:init", "reserved:ingress",
            "reserved:unmanaged", "reserved:host,reserved:kube-apiserver"]

def any_identity():
    if R.random() < 0.75:
        return pod_labels()
    return R.choice(RESERVED)

CIDRS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16", "0.0.0.0/0", "10.96.0.0/12",
         "2001:db8::/32", "::/0", "172.16.0.0/12", "10.1.2.3"]
ADDRS = ["10.1.2.3", "10.1.2.4", "10.96.1.1", "10.200.0.1", "192.168.1.1", "8.8.8.8", "2001:db8::1", "2001:db9::1",
         "172.16.5.5", "10.1.0.0/16", "10.0.0.0/9"]

def selector(keys_style="cnp", allow_reserved=True):
    r = R.random()
    if r < 0.15:
        return {}
    sel = {}
    ml = {}
    choices = [
        lambda: ml.__setitem__("app", R.choice(APPS)),
        lambda: ml.__setitem__("k8s:app", R.choice(APPS)),
        lambda: ml.__setitem__("tier", R.choice(["front", "back"])),
        lambda: ml.__setitem__("io.kubernetes.pod.namespace", R.choice(NS)),
        lambda: ml.__setitem__("k8s:io.kubernetes.pod.namespace", R.choice(NS)),
        lambda: ml.__setitem__("k8s:io.cilium.k8s.namespace.labels.team", R.choice("ab")),
        lambda: ml.__setitem__("io.cilium.k8s.policy.cluster", R.choice(["default", "other"])),
        lambda: ml.__setitem__("container:role", R.choice(["x", "y"])),
    ]
    if keys_style == "knp":
        choices = choices[:1] + choices[2:3]
    if allow_reserved and keys_style == "cnp":
        choices.append(lambda: ml.__setitem__("reserved:" + R.choice(["host", "world", "health", "init", "remote-node"]), ""))
    for _ in range(R.randint(1, 2)):
        R.choice(choices)()
    if ml:
        sel["matchLabels"] = ml
    if R.random() < 0.25:
        op = R.choice(["In", "NotIn", "Exists", "DoesNotExist"])
        key = R.choice(["app", "tier", "k8s:app", "env"] if keys_style == "cnp" else ["app", "tier", "env"])
        e = {"key": key, "operator": op}
        if op in ("In", "NotIn"):
            e["values"] = R.sample(APPS + ["front", "back"], R.randint(1, 2))
        sel["matchExpressions"] = [e]
    return sel

ENTITIES = ["all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "remote-node", "kube-apiserver",
            "health", "init", "ingress", "unmanaged", "none", "cluster-mesh"]

def ports():
    out = []
    for _ in range(R.randint(1, 2)):
        pr = {"ports": []}
        if R.random() < 0.05:
            out.append({})
            continue
        for _ in range(R.randint(1, 2)):
            p = {"port": str(R.choice([80, 443, 53, 8080, 0, 1000, 1024, "http", "dns"]))}
            if R.random() < 0.25 and p["port"] not in ("http", "dns"):
                # From port 0 the range is every port, as Cilium reads it.
                p["endPort"] = int(p["port"]) + R.choice([1, 7, 100, 1000])
            if R.random() < 0.8:
                p["protocol"] = R.choice(["TCP", "UDP", "SCTP", "ANY", "tcp"])
            pr["ports"].append(p)
        out.append(pr)
    return out

def item(direction, deny):
    it = {}
    pre = "from" if direction == "ingress" else "to"
    r = R.random()
    if r < 0.35:
        n = R.choice([0, 1, 1, 2]) if R.random() < 0.9 else 0
        it[pre + "Endpoints"] = [selector() for _ in range(n)]
    elif r < 0.55:
        it[pre + "Entities"] = R.sample(ENTITIES, R.randint(1, 2))
    elif r < 0.65:
        it[pre + "CIDR"] = R.sample(CIDRS, R.randint(1, 2))
    elif r < 0.75:
        c = R.choice(["10.0.0.0/8", "0.0.0.0/0", "10.1.0.0/16", "2001:db8::/32"])
        cs = {"cidr": c}
        if R.random() < 0.7:
            ex = {"10.0.0.0/8": ["10.96.0.0/12", "10.1.2.0/24"], "0.0.0.0/0": ["10.0.0.0/8", "192.168.0.0/16"],
                  "10.1.0.0/16": ["10.1.2.3/32"], "2001:db8::/32": ["2001:db8::/64"]}[c]
            cs["except"] = R.sample(ex, R.randint(1, len(ex)))
        it[pre + "CIDRSet"] = [cs]
    # else: no peers
    r = R.random()
    if r < 0.5:
        it["toPorts"] = ports()
    elif r < 0.55:
        it["icmps"] = [{"fields": [{"type": R.choice([8, 0, "EchoRequest"]), "family": "IPv4"}]}]
    return it

def cnp_rule(clusterwide):
    r = {}
    if R.random() < 0.05 and clusterwide:
        r["endpointSelector"] = {"matchLabels": {"reserved:" + R.choice(["health", "init", "ingress", "world"]): ""}}
    else:
        r["endpointSelector"] = selector(allow_reserved=False)
    for sec in ["ingress", "ingressDeny", "egress", "egressDeny"]:
        if R.random() < (0.5 if "Deny" not in sec else 0.25):
            direction = "ingress" if sec.startswith("ingress") else "egress"
            r[sec] = [item(direction, "Deny" in sec) for _ in range(R.randint(0, 2))]
    if not any(r.get(s) for s in ["ingress", "ingressDeny", "egress", "egressDeny"]):
        r["ingress"] = [item("ingress", False)]
    if R.random() < 0.15:
        dd = {}
        if R.random() < 0.7: dd["ingress"] = R.random() < 0.5
        if R.random() < 0.7: dd["egress"] = R.random() < 0.5
        r["enableDefaultDeny"] = dd
    return r

def knp():
    spec = {"podSelector": selector("knp")}
    if R.random() < 0.5:
        spec["policyTypes"] = R.sample(["Ingress", "Egress"], R.randint(1, 2))
    for sec, pk in [("ingress", "from"), ("egress", "to")]:
        if R.random() < 0.6:
            rules = []
            for _ in range(R.randint(0, 2)):
                rr = {}
                if R.random() < 0.7:
                    peers = []
                    for _ in range(R.randint(0, 2)):
                        t = R.random()
                        if t < 0.35:
                            peers.append({"podSelector": selector("knp")})
                        elif t < 0.55:
                            peers.append({"namespaceSelector": R.choice([{}, {"matchLabels": {"team": R.choice("ab")}}])})
                        elif t < 0.8:
                            peers.append({"podSelector": selector("knp"), "namespaceSelector": R.choice([{}, {"matchLabels": {"team": R.choice("ab")}}])})
                        else:
                            b = {"cidr": R.choice(["10.0.0.0/8", "0.0.0.0/0", "192.168.0.0/16"])}
                            if b["cidr"] == "10.0.0.0/8" and R.random() < 0.5:
                                b["except"] = ["10.96.0.0/12"]
                            peers.append({"ipBlock": b})
                    rr[pk] = peers
                if R.random() < 0.5:
                    ps = []
                    for _ in range(R.randint(1, 2)):
                        p = {}
                        if R.random() < 0.8:
                            p["port"] = R.choice([80, 443, 53, 8080, "http"])
                            if R.random() < 0.2 and p["port"] != "http":
                                p["endPort"] = p["port"] + R.choice([1, 100])
                        if R.random() < 0.7:
                            p["protocol"] = R.choice(["TCP", "UDP", "SCTP"])
                        ps.append(p)
                    rr["ports"] = ps
                rules.append(rr)
            spec[sec] = rules
    return spec

def yaml_doc(obj):
    return json.dumps(obj)  # JSON is YAML

def policy(i):
    t = R.random()
    if t < 0.5:
        o = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
             "metadata": {"name": "p%d" % i, "namespace": R.choice(NS)}}
        if R.random() < 0.1:
            del o["metadata"]["namespace"]
        if R.random() < 0.2:
            o["specs"] = [cnp_rule(False) for _ in range(2)]
        else:
            o["spec"] = cnp_rule(False)
    elif t < 0.75:
        o = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
             "metadata": {"name": "c%d" % i}, "spec": cnp_rule(True)}
    else:
        o = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "k%d" % i, "namespace": R.choice(NS)}, "spec": knp()}
    return yaml_doc(o)

for n in range(N):
    docs = [policy(i) for i in range(R.randint(1, 3))]
    case = {"docs": docs, "from": any_identity()}
    if R.random() < 0.2:
        case["tocidr"] = R.choice(ADDRS)
    else:
        case["to"] = any_identity()
    pr = R.choice(["TCP", "TCP", "UDP", "SCTP", "ICMP"])
    case["proto"] = pr
    if R.random() < 0.5:
        case["namedtcp"] = {"http": R.choice([80, 8080]), "dns": 53}
    case["port"] = 8 if pr == "ICMP" else R.choice([80, 81, 443, 53, 8080, 8081, 1000, 1023, 1024, 1100, 65535])
    print(json.dumps(case))
