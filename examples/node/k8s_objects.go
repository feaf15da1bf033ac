package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"go.yaml.in/yaml/v3"

	"github.com/nodeplane/nodeplane/lb"
	"github.com/nodeplane/nodeplane/policy"
)

// policyChanged follows one policy object. Its spec goes through the
// policy package's parser, the same as a manifest file's: a valid version
// replaces the object's policy in force, an invalid one is logged and
// reported as an event on the object and leaves the previous version in
// force (a new object that is invalid enforces nothing).
func (k *kubeSource) policyChanged(obj any, deleted bool) {
	var (
		key        objectKey
		uid        string
		apiVersion string
		doc        []byte
		err        error
	)
	switch o := obj.(type) {
	case *networkingv1.NetworkPolicy:
		np := o.DeepCopy()
		np.APIVersion, np.Kind = "networking.k8s.io/v1", "NetworkPolicy"
		np.ManagedFields = nil
		key, uid, apiVersion = objectKey{"NetworkPolicy", np.Namespace, np.Name}, string(np.UID), np.APIVersion
		doc, err = json.Marshal(np)
	case *unstructured.Unstructured:
		key, uid, apiVersion = objectKey{o.GetKind(), o.GetNamespace(), o.GetName()}, string(o.GetUID()), o.GetAPIVersion()
		doc, err = json.Marshal(o.Object)
	default:
		return
	}
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if deleted {
		delete(k.policies, key)
		delete(k.reported, key)
		k.applyLocked(key, uid, apiVersion)
		return
	}
	var pols []policy.Policy
	if err == nil {
		// The engine's parser also refuses what this agent cannot
		// enforce (L7 rules without their proxy, toFQDNs without the
		// DNS proxy), so that such a policy is reported here and kept
		// out of the set, where it would fail every later apply.
		pols, err = a.engine.Parse(doc, key.String())
	}
	if err == nil && len(pols) != 1 {
		err = fmt.Errorf("%v: %d policies in one object", key, len(pols))
	}
	if err != nil {
		msg := err.Error()
		in := "the previous version stays in force"
		if _, ok := k.policies[key]; !ok {
			in = "nothing of it is enforced"
		}
		if k.reported[key] != msg {
			// Logged once per error: the status update below comes back
			// as an update of the same object.
			k.log.Error("invalid policy; "+in, "object", key, "err", msg)
			k.reported[key] = msg
			k.eventf(key, uid, apiVersion, corev1.EventTypeWarning, "PolicyInvalid", "node %s: %s; %s", a.cfg.Node, msg, in)
			k.setPolicyStatus(key, msg+"; "+in)
		}
		return
	}
	if old, ok := k.policies[key]; ok && samePolicy(old, pols[0]) {
		return // metadata or status changed, not what is enforced
	}
	k.policies[key] = pols[0]
	k.applyLocked(key, uid, apiVersion)
}

// applyLocked makes the source's policies and services the set in force,
// and reports the outcome on the object that changed (if any).
func (k *kubeSource) applyLocked(key objectKey, uid, apiVersion string) {
	a := k.a
	set := manifestSet{policies: make(map[policy.PolicyID]policy.Policy, len(k.policies)), services: k.services}
	for _, p := range k.policies {
		set.policies[p.ID()] = p
	}
	n, err := a.applySet(set)
	if err != nil {
		k.log.Error("kubernetes objects not applied", "object", key, "err", err)
		a.manErr = err
		if key.kind != "" {
			k.eventf(key, uid, apiVersion, corev1.EventTypeWarning, "PolicyNotEnforced", "node %s: %v", a.cfg.Node, err)
			k.setPolicyStatus(key, err.Error())
		}
		return
	}
	a.manErr = nil
	k.log.Debug("kubernetes objects applied", "object", key, "changes", n, "policies", len(set.policies), "services", len(set.services))
	if _, ok := k.policies[key]; ok && key.kind != "" {
		msg := "enforced"
		if k.reported[key] != msg {
			k.reported[key] = msg
			k.eventf(key, uid, apiVersion, corev1.EventTypeNormal, "PolicyEnforced", "node %s: policy enforced", a.cfg.Node)
			k.setPolicyStatus(key, "")
		}
	}
}

// servicesChanged rebuilds the services from every Service and
// EndpointSlice the informers hold, with the manifest source's decoder
// and join (each object as a one-document manifest), and applies what
// changed. An invalid Service or EndpointSlice is logged and left out.
// Decoding (a JSON and a YAML round trip) is the cost: an object is
// decoded again only when its resource version changed; the join reads
// every object's decoded form.
func (k *kubeSource) servicesChanged() {
	// Under the lock, so that two handlers cannot apply their snapshots
	// out of order.
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	var (
		svcs   []k8sService
		slices []k8sEndpointSlice
		seen   = make(map[types.UID]bool, len(k.decoded))
	)
	for _, o := range k.factory.Core().V1().Services().Informer().GetStore().List() {
		if svc, ok := o.(*corev1.Service); ok {
			if d := k.decode(svc, &svc.ObjectMeta, seen); d.svc != nil {
				svcs = append(svcs, *d.svc)
			}
		}
	}
	for _, o := range k.factory.Discovery().V1().EndpointSlices().Informer().GetStore().List() {
		if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
			if d := k.decode(sl, &sl.ObjectMeta, seen); d.slice != nil {
				slices = append(slices, *d.slice)
			}
		}
	}
	for uid := range k.decoded {
		if !seen[uid] {
			delete(k.decoded, uid)
		}
	}
	out := map[lb.Frontend]service{}
	if err := buildServices(out, svcs, slices, k.a.cfg.Node); err != nil {
		k.log.Warn("services", "err", err)
	}
	if maps.EqualFunc(out, k.services, func(x, y service) bool { return reflect.DeepEqual(x, y) }) {
		return
	}
	k.services = out
	k.applyLocked(objectKey{}, "", "")
}

// decodedObject is a Service or an EndpointSlice as the manifest decoders
// read it, at one resource version; both nil when it is invalid (or a
// Service nodeplane leaves out).
type decodedObject struct {
	version string
	svc     *k8sService
	slice   *k8sEndpointSlice
}

// decode returns obj (a *corev1.Service or *discoveryv1.EndpointSlice)
// decoded, from the cache when its resource version has not changed, and
// marks it seen. An invalid object is logged when it is decoded.
func (k *kubeSource) decode(obj any, meta *metav1.ObjectMeta, seen map[types.UID]bool) decodedObject {
	seen[meta.UID] = true
	if d, ok := k.decoded[meta.UID]; ok && d.version == meta.ResourceVersion && meta.ResourceVersion != "" {
		return d
	}
	d := decodedObject{version: meta.ResourceVersion}
	name := meta.Namespace + "/" + meta.Name
	n, err := objectNode(obj)
	if err == nil {
		switch obj.(type) {
		case *corev1.Service:
			d.svc, err = decodeService("Service "+name, 1, 1, n)
		case *discoveryv1.EndpointSlice:
			d.slice, err = decodeEndpointSlice("EndpointSlice "+name, 1, 1, n)
		}
	}
	if err != nil {
		d.svc, d.slice = nil, nil
		if _, ok := obj.(*corev1.Service); ok {
			k.log.Warn("service left out", "service", name, "err", err)
		} else {
			k.log.Warn("endpoint slice left out", "slice", name, "err", err)
		}
	}
	k.decoded[meta.UID] = d
	return d
}

// objectNode is an API object as the YAML node the manifest decoders take
// (JSON is YAML).
func objectNode(obj any) (*yaml.Node, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, err
	}
	return root.Content[0], nil
}
