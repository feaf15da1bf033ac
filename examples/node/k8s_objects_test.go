package main

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/lb"
	"github.com/nodeplane/nodeplane/policy"
)

// The API server's objects, as client-go holds them, go through the same
// decoders as manifest files: a typed NetworkPolicy (with the fields the
// API server adds) parses, and a Service with an EndpointSlice joins into
// a frontend with its ready backends.
func TestKubeObjectsDecode(t *testing.T) {
	tcp := corev1.ProtocolTCP
	np := &networkingv1.NetworkPolicy{
		TypeMeta: metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "prod", UID: "1234", ResourceVersion: "7", Generation: 1,
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}, CreationTimestamp: metav1.Now()},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: new(intstr.FromInt32(5432))}},
			}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		}}
	doc, err := json.Marshal(np)
	if err != nil {
		t.Fatal(err)
	}
	pols, err := policy.Parse(doc, "NetworkPolicy prod/db")
	if err != nil || len(pols) != 1 {
		t.Fatalf("parse %s: %v, %d policies", doc, err, len(pols))
	}
	if id := pols[0].ID(); id != (policy.PolicyID{Kind: policy.KindNetworkPolicy, Namespace: "prod", Name: "db"}) || pols[0].UID != "1234" {
		t.Errorf("policy %v uid %q", id, pols[0].UID)
	}

	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "prod"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: tcp}}}}
	ready, notReady, port := true, false, int32(8080)
	slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "api-x", Namespace: "prod",
		Labels: map[string]string{discoveryv1.LabelServiceName: "api"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}},
		},
		Ports: []discoveryv1.EndpointPort{{Port: &port, Protocol: &tcp}}}
	sn, err := objectNode(svc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := decodeService("Service prod/api", 1, 1, sn)
	if err != nil || s == nil {
		t.Fatalf("decode service: %v", err)
	}
	en, err := objectNode(slice)
	if err != nil {
		t.Fatal(err)
	}
	sl, err := decodeEndpointSlice("EndpointSlice prod/api-x", 1, 1, en)
	if err != nil {
		t.Fatalf("decode slice: %v", err)
	}
	out := map[lb.Frontend]service{}
	if err := buildServices(out, []k8sService{*s}, []k8sEndpointSlice{*sl}, ""); err != nil {
		t.Fatal(err)
	}
	fe := lb.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Protocol: nodeplane.ProtoTCP}
	got, ok := out[fe]
	if !ok || len(out) != 1 {
		t.Fatalf("frontends %v, want only %v", out, fe)
	}
	if len(got.backends) != 1 || got.backends[0].Addr != netip.MustParseAddrPort("10.0.0.1:8080") {
		t.Errorf("backends %v, want the ready 10.0.0.1:8080 only", got.backends)
	}

	// A NodePort Service is refused as from a manifest, not half applied.
	svc.Spec.Type = corev1.ServiceTypeNodePort
	sn, _ = objectNode(svc)
	if _, err := decodeService("Service prod/api", 1, 1, sn); err == nil {
		t.Error("a NodePort service was accepted")
	}
}

// An event decodes only the object whose resource version changed: the
// cache answers for the others, and forgets nothing it should not.
func TestKubeObjectsDecodeCache(t *testing.T) {
	k := &kubeSource{log: slog.New(slog.DiscardHandler), decoded: map[types.UID]decodedObject{}}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "api", UID: "u1", ResourceVersion: "1"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}}
	clusterIP := func(d decodedObject) string {
		if d.svc == nil {
			return "(none)"
		}
		return d.svc.Spec.ClusterIP
	}
	seen := map[types.UID]bool{}
	if got := clusterIP(k.decode(svc, &svc.ObjectMeta, seen)); got != "10.96.0.10" || !seen["u1"] {
		t.Fatalf("first decode: cluster IP %s, seen %v", got, seen)
	}
	// The same version again is not decoded again: the cache holds what
	// version 1 said, whatever the object now says.
	svc.Spec.ClusterIP = "10.96.0.11"
	if got := clusterIP(k.decode(svc, &svc.ObjectMeta, seen)); got != "10.96.0.10" {
		t.Errorf("same resource version: cluster IP %s, want the cached 10.96.0.10", got)
	}
	svc.ResourceVersion = "2"
	if got := clusterIP(k.decode(svc, &svc.ObjectMeta, seen)); got != "10.96.0.11" {
		t.Errorf("new resource version: cluster IP %s, want 10.96.0.11", got)
	}
	// An object without a version (not from an API server) is always
	// decoded; an invalid one decodes to nothing.
	svc.ResourceVersion = ""
	svc.Spec.ClusterIP = "not-an-ip"
	if d := k.decode(svc, &svc.ObjectMeta, seen); d.svc != nil {
		t.Errorf("invalid cluster IP decoded to %+v", d.svc)
	}
}
