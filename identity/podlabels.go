package identity

import "strings"

// The label keys Cilium adds to a pod's endpoint (cilium's
// pkg/k8s/apis/cilium.io constants); namespaceLabelsPrefix is declared
// with the selector validation.
const (
	podNamespaceLabel   = "io.kubernetes.pod.namespace"
	serviceAccountLabel = "io.cilium.k8s.policy.serviceaccount"
	clusterLabel        = "io.cilium.k8s.policy.cluster"
	// ciliumLabelPrefix starts every label Cilium owns; a pod's own labels
	// with it are dropped.
	ciliumLabelPrefix = "io.cilium.k8s"
	// namespaceNameLabel is the label the API server puts on every
	// namespace.
	namespaceNameLabel = "kubernetes.io/metadata.name"
	defaultClusterName = "default"
)

// PodLabelsConfig describes a pod for [PodLabels].
type PodLabelsConfig struct {
	// Namespace is the pod's namespace. Required.
	Namespace string
	// Cluster is the name of the cluster the pod runs in. Empty means
	// "default", Cilium's default cluster-name.
	Cluster string
	// ServiceAccount is the pod's service account; empty means none, and
	// the pod gets no service-account label.
	ServiceAccount string
	// Labels are the pod's own labels (metadata.labels), keys without a
	// source.
	Labels map[string]string
	// NamespaceLabels are the labels of the pod's namespace.
	NamespaceLabels map[string]string
}

// PodLabels returns the labels Cilium gives a pod's endpoint, all with
// source k8s, as Cilium's SanitizePodLabels builds them:
//
//   - the pod's labels, except those whose key starts with
//     "io.cilium.k8s" (a pod cannot claim the labels below);
//   - io.kubernetes.pod.namespace=<Namespace>;
//   - io.cilium.k8s.namespace.labels.<key>=<value> for each namespace
//     label, and for kubernetes.io/metadata.name=<Namespace>, which the
//     Kubernetes API server puts on every namespace;
//   - io.cilium.k8s.policy.serviceaccount=<ServiceAccount>, if given;
//   - io.cilium.k8s.policy.cluster=<Cluster>.
//
// Policies rely on these: a namespaced policy selects only endpoints with
// its namespace label, and Cilium adds the cluster label to the selectors
// it derives from policies, so an endpoint without it matches no peer
// selector. Cilium then drops the labels its identity-relevant-label
// filter ignores (pod-template-hash and the like) before it allocates the
// identity; PodLabels keeps them, so leave them out of Labels to get the
// same identities. An empty Namespace or a malformed label is an error
// wrapping [ErrInvalidLabel].
func PodLabels(cfg PodLabelsConfig) (Labels, error) {
	if cfg.Namespace == "" {
		return Labels{}, &LabelError{Label: podNamespaceLabel, Reason: "PodLabelsConfig.Namespace is required"}
	}
	cluster := cfg.Cluster
	if cluster == "" {
		cluster = defaultClusterName
	}
	m := make(map[string]string, len(cfg.Labels)+len(cfg.NamespaceLabels)+4)
	for k, v := range cfg.Labels {
		if !strings.HasPrefix(k, ciliumLabelPrefix) {
			m[k] = v
		}
	}
	for k, v := range cfg.NamespaceLabels {
		m[namespaceLabelsPrefix+k] = v
	}
	m[namespaceLabelsPrefix+namespaceNameLabel] = cfg.Namespace
	m[podNamespaceLabel] = cfg.Namespace
	if cfg.ServiceAccount != "" {
		m[serviceAccountLabel] = cfg.ServiceAccount
	}
	m[clusterLabel] = cluster
	return labelsFromMap(m, SourceK8s)
}
