package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

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
func (k *kubeSource) servicesChanged() {
	// Under the lock, so that two handlers cannot apply their snapshots
	// out of order.
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	svcObjs := k.factory.Core().V1().Services().Informer().GetStore().List()
	sliceObjs := k.factory.Discovery().V1().EndpointSlices().Informer().GetStore().List()
	var (
		svcs   []k8sService
		slices []k8sEndpointSlice
	)
	for _, o := range svcObjs {
		svc, ok := o.(*corev1.Service)
		if !ok {
			continue
		}
		n, err := objectNode(svc)
		if err == nil {
			var s *k8sService
			if s, err = decodeService("Service "+svc.Namespace+"/"+svc.Name, 1, 1, n); err == nil && s != nil {
				svcs = append(svcs, *s)
			}
		}
		if err != nil {
			k.log.Warn("service left out", "service", svc.Namespace+"/"+svc.Name, "err", err)
		}
	}
	for _, o := range sliceObjs {
		sl, ok := o.(*discoveryv1.EndpointSlice)
		if !ok {
			continue
		}
		n, err := objectNode(sl)
		if err == nil {
			var s *k8sEndpointSlice
			if s, err = decodeEndpointSlice("EndpointSlice "+sl.Namespace+"/"+sl.Name, 1, 1, n); err == nil {
				slices = append(slices, *s)
			}
		}
		if err != nil {
			k.log.Warn("endpoint slice left out", "slice", sl.Namespace+"/"+sl.Name, "err", err)
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
