package policy

import (
	"github.com/nodeplane/nodeplane/identity"
)

// Entity names a class of peers that have no labels of their own to select
// by: the world outside the cluster, the host, the whole cluster.
type Entity string

// The entities of Cilium's policy language.
const (
	// EntityAll is every peer, in or out of the cluster.
	EntityAll Entity = "all"
	// EntityWorld is every peer outside the cluster: reserved:world,
	// world-ipv4, world-ipv6 and every CIDR identity (they carry a world
	// label).
	EntityWorld Entity = "world"
	// EntityWorldIPv4 is the IPv4 part of the world (dual-stack clusters).
	EntityWorldIPv4 Entity = "world-ipv4"
	// EntityWorldIPv6 is the IPv6 part of the world (dual-stack clusters).
	EntityWorldIPv6 Entity = "world-ipv6"
	// EntityCluster is every peer of the local cluster: its endpoints (by
	// the cluster-name label) and the host, remote nodes, kube-apiserver,
	// health, init, ingress and unmanaged identities.
	EntityCluster Entity = "cluster"
	// EntityClusterMesh is the cluster entity extended to every cluster of
	// a cluster mesh.
	EntityClusterMesh Entity = "cluster-mesh"
	// EntityHost is the local node.
	EntityHost Entity = "host"
	// EntityRemoteNode is every other node, including the ones that run the
	// kube-apiserver.
	EntityRemoteNode Entity = "remote-node"
	// EntityKubeAPIServer is the kube-apiserver.
	EntityKubeAPIServer Entity = "kube-apiserver"
	// EntityHealth is the health-check endpoints.
	EntityHealth Entity = "health"
	// EntityInit is endpoints whose labels are not known yet.
	EntityInit Entity = "init"
	// EntityIngress is the ingress proxy.
	EntityIngress Entity = "ingress"
	// EntityUnmanaged is endpoints the dataplane does not manage.
	EntityUnmanaged Entity = "unmanaged"
	// EntityNone selects nothing.
	EntityNone Entity = "none"
)

// Names of reserved labels that are not identities' own labels in this
// SDK but that Cilium's entity selectors name: the aggregate identities
// and "none". Selectors for them select nothing here, as in Cilium for
// every identity that can carry traffic.
const (
	labelAggregateWorld       = "aggregate-world"
	labelAggregateRemoteNode  = "aggregate-remote-node"
	labelAggregateCluster     = "aggregate-cluster"
	labelAggregateClusterMesh = "aggregate-cluster-mesh"
	labelNone                 = "none"
)

// Label keys of the Kubernetes metadata Cilium gives a pod.
const (
	// LabelPodNamespace is the pod's namespace, "k8s:io.kubernetes.pod.namespace".
	LabelPodNamespace = "io.kubernetes.pod.namespace"
	// LabelNamespaceLabelsPrefix prefixes the labels of the pod's namespace:
	// "k8s:io.cilium.k8s.namespace.labels.team=a".
	LabelNamespaceLabelsPrefix = "io.cilium.k8s.namespace.labels"
	// LabelCluster is the cluster name, "k8s:io.cilium.k8s.policy.cluster".
	LabelCluster = "io.cilium.k8s.policy.cluster"

	labelPolicyDerivedFrom = "io.cilium.k8s.policy.derived-from"
	labelPolicyName        = "io.cilium.k8s.policy.name"
	labelPolicyNamespace   = "io.cilium.k8s.policy.namespace"
	labelPolicyUID         = "io.cilium.k8s.policy.uid"
)

var knownEntities = map[Entity]bool{
	EntityAll: true, EntityWorld: true, EntityWorldIPv4: true, EntityWorldIPv6: true,
	EntityCluster: true, EntityClusterMesh: true, EntityHost: true, EntityRemoteNode: true,
	EntityKubeAPIServer: true, EntityHealth: true, EntityInit: true, EntityIngress: true,
	EntityUnmanaged: true, EntityNone: true,
}

// Valid reports whether e is an entity Cilium knows.
func (e Entity) Valid() bool { return knownEntities[e] }

func reservedSelector(name string) identity.LabelSelector {
	return identity.LabelSelector{MatchLabels: map[string]string{identity.SourceReserved + ":" + name: ""}}
}

// entitySelectors returns the label selectors an entity stands for, as
// Cilium's EntitySelectorMapping has them; clusterName is the local
// cluster's name for the cluster entity.
func entitySelectors(e Entity, clusterName string) []identity.LabelSelector {
	clusterSelectors := func() []identity.LabelSelector {
		return []identity.LabelSelector{
			reservedSelector(identity.LabelHost),
			reservedSelector(identity.LabelRemoteNode),
			reservedSelector(identity.LabelInit),
			reservedSelector(identity.LabelIngress),
			reservedSelector(identity.LabelHealth),
			reservedSelector(identity.LabelUnmanaged),
			reservedSelector(identity.LabelKubeAPIServer),
			reservedSelector(labelAggregateCluster),
		}
	}
	switch e {
	case EntityAll:
		return []identity.LabelSelector{{}}
	case EntityWorld:
		return []identity.LabelSelector{
			reservedSelector(identity.LabelWorld),
			reservedSelector(identity.LabelWorldIPv4),
			reservedSelector(identity.LabelWorldIPv6),
			reservedSelector(labelAggregateWorld),
		}
	case EntityWorldIPv4:
		return []identity.LabelSelector{reservedSelector(identity.LabelWorldIPv4)}
	case EntityWorldIPv6:
		return []identity.LabelSelector{reservedSelector(identity.LabelWorldIPv6)}
	case EntityHost:
		return []identity.LabelSelector{reservedSelector(identity.LabelHost)}
	case EntityInit:
		return []identity.LabelSelector{reservedSelector(identity.LabelInit)}
	case EntityIngress:
		return []identity.LabelSelector{reservedSelector(identity.LabelIngress)}
	case EntityRemoteNode:
		return []identity.LabelSelector{
			reservedSelector(identity.LabelRemoteNode),
			reservedSelector(labelAggregateRemoteNode),
		}
	case EntityHealth:
		return []identity.LabelSelector{reservedSelector(identity.LabelHealth)}
	case EntityUnmanaged:
		return []identity.LabelSelector{reservedSelector(identity.LabelUnmanaged)}
	case EntityNone:
		return []identity.LabelSelector{reservedSelector(labelNone)}
	case EntityKubeAPIServer:
		return []identity.LabelSelector{reservedSelector(identity.LabelKubeAPIServer)}
	case EntityCluster:
		return append(clusterSelectors(), identity.LabelSelector{
			MatchLabels: map[string]string{identity.SourceK8s + ":" + LabelCluster: clusterName},
		})
	case EntityClusterMesh:
		return append(clusterSelectors(),
			reservedSelector(labelAggregateClusterMesh),
			identity.LabelSelector{MatchExpressions: []identity.SelectorRequirement{{
				Key: identity.SourceK8s + ":" + LabelCluster, Operator: identity.SelectorOpExists,
			}}},
		)
	}
	return nil
}
