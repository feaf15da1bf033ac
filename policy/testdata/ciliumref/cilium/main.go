// Command ciliumref asks Cilium v1.20.2's own policy engine for flow
// verdicts. It reads JSON lines {"docs": [yaml, ...], "from": labels,
// "to": labels, "tocidr": prefix, "fromcidr": prefix, "proto": "TCP",
// "port": 80, "namedtcp": {name: port}} and writes JSON lines {"egress":
// "allowed"|"denied", "ingress": ..., "err": ...}.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/cilium/cilium/pkg/crypto/certificatemanager"
	envoypolicy "github.com/cilium/cilium/pkg/envoy/policy"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/identity/identitymanager"
	ipcachetypes "github.com/cilium/cilium/pkg/ipcache/types"
	"github.com/cilium/cilium/pkg/k8s"
	v2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	slim_networkingv1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/api/networking/v1"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy"
	"github.com/cilium/cilium/pkg/policy/api"
	"github.com/cilium/cilium/pkg/policy/types"
	"github.com/cilium/cilium/pkg/policy/utils"
	testcertificatemanager "github.com/cilium/cilium/pkg/testutils/certificatemanager"
	testpolicy "github.com/cilium/cilium/pkg/testutils/policy"
	"github.com/cilium/cilium/pkg/u8proto"
)

type input struct {
	Docs     []string          `json:"docs"`
	From     string            `json:"from"`
	To       string            `json:"to"`
	ToCIDR   string            `json:"tocidr"`
	FromCIDR string            `json:"fromcidr"`
	Proto    string            `json:"proto"`
	Port     uint16            `json:"port"`
	NamedTCP map[string]uint16 `json:"namedtcp"`
}

type output struct {
	Egress  string `json:"egress"`
	Ingress string `json:"ingress"`
	Err     string `json:"err,omitempty"`
}

var logger = slog.New(slog.NewTextHandler(io.Discard, nil))

func parseDocs(docs []string) (types.PolicyEntries, []ipcachetypes.ResourceID, []types.PolicyEntries, error) {
	var all types.PolicyEntries
	var rids []ipcachetypes.ResourceID
	var per []types.PolicyEntries
	for i, d := range docs {
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(d), &meta); err != nil {
			return nil, nil, nil, fmt.Errorf("doc %d: %w", i, err)
		}
		var entries types.PolicyEntries
		var rid ipcachetypes.ResourceID
		switch meta.Kind {
		case "CiliumNetworkPolicy":
			var cnp v2.CiliumNetworkPolicy
			if err := yaml.Unmarshal([]byte(d), &cnp); err != nil {
				return nil, nil, nil, fmt.Errorf("doc %d: %w", i, err)
			}
			rules, err := cnp.Parse(logger, "default")
			if err != nil {
				return nil, nil, nil, fmt.Errorf("doc %d: %w", i, err)
			}
			entries = utils.RulesToPolicyEntries(rules)
			rid = ipcachetypes.NewResourceID(ipcachetypes.ResourceKindCNP, cnp.Namespace, cnp.Name)
		case "CiliumClusterwideNetworkPolicy":
			var ccnp v2.CiliumClusterwideNetworkPolicy
			if err := yaml.Unmarshal([]byte(d), &ccnp); err != nil {
				return nil, nil, nil, fmt.Errorf("doc %d: %w", i, err)
			}
			rules, err := ccnp.Parse(logger, "default")
			if err != nil {
				return nil, nil, nil, fmt.Errorf("doc %d: %w", i, err)
			}
			entries = utils.RulesToPolicyEntries(rules)
			rid = ipcachetypes.NewResourceID(ipcachetypes.ResourceKindCCNP, "", ccnp.Name)
		case "NetworkPolicy":
			var np slim_networkingv1.NetworkPolicy
			if err := yaml.Unmarshal([]byte(d), &np); err != nil {
				return nil, nil, nil, fmt.Errorf("doc %d: %w", i, err)
			}
			e, err := k8s.ParseNetworkPolicy(logger, "default", &np)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("doc %d: %w", i, err)
			}
			entries = e
			ns := np.Namespace
			if ns == "" {
				ns = "default"
			}
			rid = ipcachetypes.NewResourceID(ipcachetypes.ResourceKindNetpol, ns, np.Name)
		default:
			return nil, nil, nil, fmt.Errorf("doc %d: unknown kind %q", i, meta.Kind)
		}
		all = append(all, entries...)
		rids = append(rids, rid)
		per = append(per, entries)
	}
	return all, rids, per, nil
}

var nextID = identity.NumericIdentity(1000)
var nextLocal = identity.NumericIdentity(1 << 24)

func identityFor(lbls labels.Labels) *identity.Identity {
	if id := identity.LookupReservedIdentityByLabels(lbls); id != nil {
		return id
	}
	nextID++
	return identity.NewIdentity(nextID, lbls)
}

func run(in input) (out output) {
	defer func() {
		if r := recover(); r != nil {
			out = output{Err: fmt.Sprintf("panic: %v", r)}
		}
	}()
	_, rids, per, err := parseDocs(in.Docs)
	if err != nil {
		return output{Err: err.Error()}
	}
	var fromLbls labels.Labels
	if in.From != "" {
		fromLbls = labels.NewLabelsFromModel(strings.Split(in.From, ","))
	}
	from := identityFor(fromLbls)
	if in.FromCIDR != "" {
		pfx, err := netip.ParsePrefix(in.FromCIDR)
		if err != nil {
			a, _ := netip.ParseAddr(in.FromCIDR)
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		lbls := labels.GetCIDRLabels(pfx)
		if id := identity.LookupReservedIdentityByLabels(lbls); id != nil {
			from = id
		} else {
			nextLocal++
			from = identity.NewIdentity(nextLocal, lbls)
		}
	}
	var to *identity.Identity
	if in.ToCIDR != "" {
		pfx, err := netip.ParsePrefix(in.ToCIDR)
		if err != nil {
			a, err2 := netip.ParseAddr(in.ToCIDR)
			if err2 != nil {
				return output{Err: err.Error()}
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		lbls := labels.GetCIDRLabels(pfx)
		if id := identity.LookupReservedIdentityByLabels(lbls); id != nil {
			to = id
		} else {
			nextLocal++
			to = identity.NewIdentity(nextLocal, lbls)
		}
	} else {
		to = identityFor(labels.NewLabelsFromModel(strings.Split(in.To, ",")))
	}
	idmgr := identitymanager.NewIDManager(logger)
	ids := identity.IdentityMap{from.ID: from.LabelArray, to.ID: to.LabelArray}
	repo := policy.NewPolicyRepository(logger, ids, &testcertificatemanager.Fake{},
		envoypolicy.NewEnvoyL7RulesTranslator(logger, certificatemanager.NewMockSecretManagerInline()),
		idmgr, testpolicy.NewPolicyMetricsNoop())
	repo.UpdateIdentities(ids, nil)
	for i := range per {
		repo.ReplaceByResource(per[i], rids[i])
	}
	proto, err := u8proto.ParseProtocol(in.Proto)
	if err != nil {
		return output{Err: err.Error()}
	}
	flow := types.Flow{From: from, To: to, Proto: proto, Dport: in.Port, NamedPortsTCP: in.NamedTCP}
	v, _, _, err := policy.LookupFlow(logger, repo, idmgr, flow)
	if err != nil {
		return output{Err: err.Error()}
	}
	return output{Egress: v.Egress.String(), Ingress: v.Ingress.String()}
}

func main() {
	api.InitEntities("default")
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 16<<20), 16<<20)
	enc := json.NewEncoder(os.Stdout)
	for sc.Scan() {
		var in input
		if err := json.Unmarshal(sc.Bytes(), &in); err != nil {
			enc.Encode(output{Err: err.Error()})
			continue
		}
		enc.Encode(run(in))
	}
}
