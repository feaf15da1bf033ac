package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/statefile"
)

// stateFormat is the agent's endpoint state file: a JSON list of records
// in internal/statefile's crash-safe framing. Addresses and identities have
// their own files (ipam.state, identity.state); this one ties them to the
// runtime's attachments.
var stateFormat = statefile.Format{Magic: "nodeplane-agent-endpoints", Version: 1, MaxBody: 64 << 20}

// record is what survives a restart of one endpoint: the API's view of it
// plus the pod labels its identity comes from.
type record struct {
	agentapi.Endpoint
	Labels map[string]string `json:"labels,omitempty"`
	// NamespaceLabels, ServiceAccount and PodUID come from the Kubernetes
	// API server (-kubeconfig): the labels of the pod's namespace, its
	// service account and the UID of the pod object the endpoint is for.
	NamespaceLabels map[string]string `json:"namespaceLabels,omitempty"`
	ServiceAccount  string            `json:"serviceAccount,omitempty"`
	PodUID          string            `json:"podUID,omitempty"`
}

func (r record) key() attachmentKey { return attachmentKey{r.ContainerID, r.IfName} }

// owner is the endpoint's name in the address pool.
func (r record) owner() string { return ownerOf(r.Attachment) }

func ownerOf(a agentapi.Attachment) string { return a.ContainerID + "/" + a.IfName }

// podName is the pod's name for flows: the Kubernetes name, else the
// container ID's first 12 characters.
func (r record) podName() string {
	if r.Pod != "" {
		return r.Pod
	}
	if len(r.ContainerID) > 12 {
		return r.ContainerID[:12]
	}
	return r.ContainerID
}

// labels returns the identity labels Cilium gives the pod.
func (r record) labels() (identity.Labels, error) {
	return podLabels(identity.PodLabelsConfig{Namespace: r.Namespace, Labels: r.Labels,
		NamespaceLabels: r.NamespaceLabels, ServiceAccount: r.ServiceAccount})
}

func podLabels(cfg identity.PodLabelsConfig) (identity.Labels, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	return identity.PodLabels(cfg)
}

func loadRecords(f *statefile.File) ([]record, error) {
	body, err := f.Load()
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("endpoint state %s: %w", f.Path(), err)
	}
	var recs []record
	if err := json.Unmarshal(body, &recs); err != nil {
		return nil, fmt.Errorf("endpoint state %s: %w: %v", f.Path(), statefile.ErrCorrupt, err)
	}
	return recs, nil
}

// saveLocked writes every endpoint's record, in endpoint ID order.
func (a *Agent) saveLocked() error {
	recs := make([]record, 0, len(a.eps))
	for _, k := range slices.SortedFunc(maps.Keys(a.eps), func(x, y attachmentKey) int {
		return int(a.eps[x].rec.EndpointID) - int(a.eps[y].rec.EndpointID)
	}) {
		recs = append(recs, a.eps[k].rec)
	}
	body, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return err
	}
	_, err = a.state.Save(body)
	return err
}
