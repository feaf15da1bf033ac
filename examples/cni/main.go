// Command nodeplane is a CNI plugin (spec 1.1: ADD, DEL, CHECK, VERSION,
// STATUS, GC) that hands each pod to the nodeplane node agent
// (examples/node) over the agent's unix socket. The agent owns the node's
// dataplane — addresses, identities, veth endpoints and policy — so the
// plugin only translates the CNI protocol (through containernetworking/cni's
// skel and types) into agentapi calls and the answers back into CNI results
// and error objects.
//
// Build it as "nodeplane" into the runtime's CNI_PATH (usually
// /opt/cni/bin) and name it in a network configuration:
//
//	{
//	  "cniVersion": "1.1.0",
//	  "name": "nodeplane",
//	  "type": "nodeplane",
//	  "agentSocket": "/run/nodeplane/agent.sock",
//	  "capabilities": {"labels": true, "bandwidth": true}
//	}
//
// Inputs: CNI_NETNS, CNI_CONTAINERID, CNI_IFNAME; K8S_POD_NAMESPACE,
// K8S_POD_NAME and K8S_POD_UID from CNI_ARGS; the pod's labels from runtimeConfig.labels
// (an object) and the CNI convention args.cni.labels (a key/value list);
// runtimeConfig.bandwidth's egressRate and ingressRate (bits per second);
// a burst is refused unless it is 0 or the "no bound" value Kubernetes
// runtimes send with every rate (at least math.MaxInt32 bits), since the
// agent enforces rates only.
//
// Error codes: 1 unsupported cniVersion; 4 invalid CNI_ARGS; 6 a
// configuration that is not JSON of the right shape; 7 an invalid
// configuration; 11 (try again later) when the agent does not answer on its
// socket; 50 from STATUS when the agent is unreachable or not ready; the
// agent's own codes pass through, among them 100 when the node's address
// pool is exhausted.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// supported are the CNI versions the plugin speaks: every version whose
// result has interfaces (0.3.0 on); STATUS and GC need 1.1.0.
var supported = version.VersionsStartingFrom("0.3.0")

func main() {
	p := &plugin{stdout: os.Stdout}
	skel.PluginMainFuncs(p.funcs(), supported, "nodeplane CNI plugin: hands pods to the nodeplane node agent")
}
