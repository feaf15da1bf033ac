package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
)

// PluginType is the name users give the plugin in a network
// configuration's "type" field, and so the name of its binary in CNI_PATH
// (the documented name; the plugin answers to whatever it is installed as).
const PluginType = "nodeplane"

// LabelsCapability is the runtimeConfig key (and capability name) that
// carries the pod's labels as an object, {"app": "web"}. No runtime passes
// pod labels on its own: Kubernetes runtimes pass annotations only
// ("io.kubernetes.cri.pod-annotations"); a runtime or tool that knows the
// labels (cnitool: CAP_ARGS) passes them here or as the CNI convention's
// args.cni.labels list.
const LabelsCapability = "labels"

// NetConf is the plugin's network configuration: the CNI fields every
// plugin gets, the agent's socket, and what the runtime adds
// (runtimeConfig for the capabilities the configuration enables, args).
type NetConf struct {
	types.PluginConf

	// AgentSocket is the node agent's unix socket (default
	// agentapi.DefaultSocket).
	AgentSocket string `json:"agentSocket,omitempty"`

	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`
	Args          *Args         `json:"args,omitempty"`
}

// RuntimeConfig holds the capability arguments the plugin understands.
type RuntimeConfig struct {
	// Labels are the pod's labels (capability "labels").
	Labels map[string]string `json:"labels,omitempty"`
	// Bandwidth is the CNI bandwidth capability: rates in bits per
	// second, bursts in bits. The agent enforces rates only (EDT has no
	// bucket; its token-bucket fallback sizes its own burst), so a burst
	// is accepted only where it asks for no bound: 0, or the values
	// Kubernetes runtimes send with every rate because the pod API has
	// no burst (see [unboundedBurst]). Any other burst is refused.
	Bandwidth *Bandwidth `json:"bandwidth,omitempty"`
}

// Bandwidth is the "bandwidth" capability's value (CNI CONVENTIONS.md).
type Bandwidth struct {
	IngressRate  uint64 `json:"ingressRate,omitempty"`
	IngressBurst uint64 `json:"ingressBurst,omitempty"`
	EgressRate   uint64 `json:"egressRate,omitempty"`
	EgressBurst  uint64 `json:"egressBurst,omitempty"`
}

// unboundedBurst is the smallest burst taken to mean "no bound". Pods have
// no burst annotation, so Kubernetes runtimes send a burst of their own
// with every rate, because the CNI bandwidth plugin refuses a rate without
// one: kubelet's dockershim and kubenet math.MaxInt32 ("in practice ... no
// limit"), containerd's CRI math.MaxUint32, CRI-O math.MaxUint32*8 (later
// math.MaxUint32*8-1, under the plugin's 4 GB cap). All are at least this.
const unboundedBurst = math.MaxInt32

// check refuses what the agent cannot enforce: a burst below
// [unboundedBurst], and a burst without its rate (which the CNI bandwidth
// plugin refuses too).
func (b *Bandwidth) check() error {
	for _, d := range []struct {
		dir         string
		rate, burst uint64
	}{{"ingress", b.IngressRate, b.IngressBurst}, {"egress", b.EgressRate, b.EgressBurst}} {
		switch {
		case d.burst != 0 && d.rate == 0:
			return invalidConfig("runtimeConfig.bandwidth: %sBurst %d without an %sRate", d.dir, d.burst, d.dir)
		case d.burst != 0 && d.burst < unboundedBurst:
			return invalidConfig("runtimeConfig.bandwidth: %sBurst %d bits cannot be enforced: the agent limits rates only "+
				"(EDT, or a token bucket that sizes its own burst); leave the burst out or at least %d, as Kubernetes runtimes send it",
				d.dir, d.burst, unboundedBurst)
		}
	}
	return nil
}

// Args is the network configuration's "args" (CNI CONVENTIONS.md): the
// runtime's optional structured arguments, under "cni".
type Args struct {
	CNI struct {
		Labels []Label `json:"labels,omitempty"`
	} `json:"cni"`
}

// Label is one entry of args.cni.labels.
type Label struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// K8sArgs are the CNI_ARGS keys the plugin reads; Kubernetes runtimes pass
// them with IgnoreUnknown=1. Without IgnoreUnknown an unknown key is an
// error, as the CNI conventions ask.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// maxLabels bounds the labels of one pod; Kubernetes has no hard limit, but
// an identity's label set is a map key on every node.
const maxLabels = 256

// parseConfig decodes and validates a network configuration. A document
// that is not JSON of the right shape is a decoding failure (code 6);
// values that decode but make no sense are an invalid configuration
// (code 7). It also parses prevResult, which CHECK (and chained ADD and
// DEL) carry.
func parseConfig(data []byte) (*NetConf, error) {
	var conf NetConf
	if err := json.Unmarshal(data, &conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode the network configuration", err.Error())
	}
	if conf.Name == "" {
		return nil, invalidConfig("missing network name (\"name\")")
	}
	// "type" names the binary the runtime ran, which is this one whatever
	// it was renamed to; only its absence is an error.
	if conf.Type == "" {
		return nil, invalidConfig("missing \"type\"")
	}
	if conf.CNIVersion == "" {
		return nil, invalidConfig("missing \"cniVersion\"")
	}
	if _, _, _, err := version.ParseVersion(conf.CNIVersion); err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("unsupported cniVersion %q", conf.CNIVersion), err.Error())
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = agentapi.DefaultSocket
	}
	if !filepath.IsAbs(conf.AgentSocket) {
		return nil, invalidConfig("\"agentSocket\" %q is not an absolute path", conf.AgentSocket)
	}
	if conf.IPAM.Type != "" {
		return nil, invalidConfig("\"ipam\" is set (type %q), but the nodeplane agent assigns addresses itself; remove \"ipam\"", conf.IPAM.Type)
	}
	if _, err := conf.labels(); err != nil {
		return nil, err
	}
	if bw := conf.RuntimeConfig.Bandwidth; bw != nil {
		if err := bw.check(); err != nil {
			return nil, err
		}
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "cannot decode prevResult", err.Error())
		}
	}
	return &conf, nil
}

// labels merges the two places labels come from: runtimeConfig.labels and
// args.cni.labels. A key given twice with different values is an error: a
// pod's labels decide its identity and so what it may reach, and picking
// one silently would hide a runtime's mistake.
func (c *NetConf) labels() (map[string]string, error) {
	out := maps.Clone(c.RuntimeConfig.Labels)
	if out == nil {
		out = map[string]string{}
	}
	if c.Args != nil {
		for i, l := range c.Args.CNI.Labels {
			if old, ok := out[l.Key]; ok && old != l.Value {
				return nil, invalidConfig("label %q is %q in runtimeConfig.labels but %q in args.cni.labels[%d]", l.Key, old, l.Value, i)
			}
			out[l.Key] = l.Value
		}
	}
	if len(out) > maxLabels {
		return nil, invalidConfig("%d labels, at most %d allowed", len(out), maxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(out)) {
		if err := checkLabel(k, out[k]); err != nil {
			return nil, err
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// checkLabel rejects what cannot be a Kubernetes label; the agent checks
// the rest when it builds the identity.
func checkLabel(k, v string) error {
	switch {
	case k == "":
		return invalidConfig("empty label key")
	case len(k) > 317: // 253 for the prefix, '/', 63 for the name
		return invalidConfig("label key %.40q... is %d bytes, at most 317", k, len(k))
	case len(v) > 63:
		return invalidConfig("label %q: value is %d bytes, at most 63", k, len(v))
	case strings.ContainsAny(k, "=,;:\n\t "):
		return invalidConfig("label key %q contains one of = , ; : or whitespace", k)
	case strings.ContainsAny(v, "=,;:\n\t "):
		return invalidConfig("label %q: value %q contains one of = , ; : or whitespace", k, v)
	}
	return nil
}

// parseArgs reads CNI_ARGS.
func parseArgs(s string) (K8sArgs, error) {
	var a K8sArgs
	if err := types.LoadArgs(s, &a); err != nil {
		return a, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", err.Error())
	}
	return a, nil
}

func invalidConfig(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "invalid nodeplane network configuration", fmt.Sprintf(format, args...))
}
