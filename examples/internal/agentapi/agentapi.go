// Package agentapi is the local API between the example node agent
// (examples/node) and the example CNI plugin (examples/cni): JSON over HTTP
// on a unix socket that only root can reach. The agent owns the node's
// dataplane (addresses, identities, endpoints, policy); the plugin is a
// short-lived process the container runtime runs per pod, so it only
// translates the CNI protocol into these calls.
//
// Errors cross the socket as [Error] values that carry a CNI error code, so
// the plugin can hand the runtime a well-formed CNI error object with the
// agent's own words.
package agentapi

import (
	"errors"
	"fmt"
	"net/netip"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/run/nodeplane/agent.sock"

// Paths of the API, all under one version prefix.
const (
	PathAdd    = "/v1/endpoints/add"
	PathDel    = "/v1/endpoints/del"
	PathCheck  = "/v1/endpoints/check"
	PathList   = "/v1/endpoints"
	PathGC     = "/v1/endpoints/gc"
	PathStatus = "/v1/status"
)

// CNI error codes (CNI spec, "Error"), and the plugin-specific ones (100
// and above) the agent uses.
const (
	CodeIncompatibleVersion = 1
	CodeUnsupportedField    = 2
	CodeUnknownContainer    = 3
	CodeInvalidEnv          = 4
	CodeIOFailure           = 5
	CodeDecodeFailure       = 6
	CodeInvalidConfig       = 7
	CodeTryAgainLater       = 11
	// CodeExhausted: the node's address pool has no free address.
	CodeExhausted = 100
	// CodeAgentUnavailable: the agent's socket does not answer.
	CodeAgentUnavailable = 101
	// CodeDataplane: the agent could not program the dataplane.
	CodeDataplane = 102
	// CodeInvalidLabels: the pod's labels cannot become an identity.
	CodeInvalidLabels = 103
)

// Error is an API error with its CNI code. Msg is short; Details says
// what to do about it.
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *Error) Error() string {
	if e.Details == "" {
		return fmt.Sprintf("%s (code %d)", e.Msg, e.Code)
	}
	return fmt.Sprintf("%s: %s (code %d)", e.Msg, e.Details, e.Code)
}

// Errorf returns an *Error with the given code and message.
func Errorf(code uint, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// CodeOf returns the CNI code of err: its *Error's, or CodeIOFailure.
func CodeOf(err error) uint {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return CodeIOFailure
}

// Attachment names one CNI attachment: a container's interface.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// AddRequest asks the agent to create an endpoint for a pod.
type AddRequest struct {
	Attachment
	// NetNS is the path of the pod's network namespace.
	NetNS string `json:"netns"`
	// Namespace and Pod name the Kubernetes pod (K8S_POD_NAMESPACE,
	// K8S_POD_NAME in CNI_ARGS); empty outside Kubernetes.
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// PodUID is the UID of that pod object (K8S_POD_UID, which kubelet
	// passes since Kubernetes 1.25): a pod deleted and created again
	// under the same name is another object, and the agent must not take
	// the old one's labels for the new one's endpoint.
	PodUID string `json:"podUID,omitempty"`
	// Labels are the pod's labels (runtimeConfig or CNI args); the agent
	// adds the namespace and cluster labels Cilium gives a pod.
	Labels map[string]string `json:"labels,omitempty"`
	// EgressRate and IngressRate are bandwidth limits in bits per second
	// (runtimeConfig.bandwidth); 0 means none.
	EgressRate  uint64 `json:"egressRate,omitempty"`
	IngressRate uint64 `json:"ingressRate,omitempty"`
}

// Interface is a network interface the agent created (CNI result
// "interfaces"). Sandbox is the netns path for the container side, empty
// for the host side.
type Interface struct {
	Name    string `json:"name"`
	MAC     string `json:"mac"`
	Sandbox string `json:"sandbox,omitempty"`
}

// IPConfig is an address given to the pod (CNI result "ips"); Interface
// indexes AddResponse.Interfaces.
type IPConfig struct {
	Address   netip.Prefix `json:"address"`
	Gateway   netip.Addr   `json:"gateway"`
	Interface int          `json:"interface"`
}

// Route is a route inside the pod (CNI result "routes").
type Route struct {
	Dst netip.Prefix `json:"dst"`
	GW  netip.Addr   `json:"gw"`
}

// AddResponse describes the endpoint the agent created.
type AddResponse struct {
	EndpointID uint16      `json:"endpointID"`
	Identity   uint32      `json:"identity"`
	Interfaces []Interface `json:"interfaces"`
	IPs        []IPConfig  `json:"ips"`
	Routes     []Route     `json:"routes,omitempty"`
	MTU        int         `json:"mtu,omitempty"`
}

// DelRequest asks the agent to remove an attachment's endpoint and
// release its address and identity reference. NetNS may be empty or gone:
// DEL must still succeed, and succeeds for an attachment it does not know.
type DelRequest struct {
	Attachment
	NetNS string `json:"netns,omitempty"`
}

// CheckRequest asks the agent whether an attachment's endpoint is as it
// was created.
type CheckRequest struct {
	Attachment
	NetNS string `json:"netns"`
	// Addrs, when set, are the addresses the runtime's result gave the
	// attachment (CNI prevResult): they must be the endpoint's.
	Addrs []netip.Prefix `json:"addrs,omitempty"`
}

// Endpoint is one endpoint the agent manages.
type Endpoint struct {
	Attachment
	NetNS      string         `json:"netns"`
	Namespace  string         `json:"namespace,omitempty"`
	Pod        string         `json:"pod,omitempty"`
	EndpointID uint16         `json:"endpointID"`
	Identity   uint32         `json:"identity"`
	HostIfName string         `json:"hostIfName"`
	Addrs      []netip.Prefix `json:"addrs"`
	// EgressRate and IngressRate are the bandwidth limits the agent
	// enforces, in bits per second; 0 means none.
	EgressRate  uint64 `json:"egressRate,omitempty"`
	IngressRate uint64 `json:"ingressRate,omitempty"`
}

// GCRequest lists the attachments the runtime still knows; the agent
// removes every other endpoint it made through this API.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// GCResponse lists what GC removed.
type GCResponse struct {
	Removed []Attachment `json:"removed"`
}

// Status says whether the agent can serve ADD.
type Status struct {
	Ready     bool   `json:"ready"`
	Node      string `json:"node"`
	Endpoints int    `json:"endpoints"`
	// Reason says why the agent is not ready.
	Reason string `json:"reason,omitempty"`
}
