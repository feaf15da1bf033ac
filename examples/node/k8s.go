package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/lb"
	"github.com/nodeplane/nodeplane/policy"
)

// The Cilium policy resources, as custom resources of group cilium.io/v2.
var (
	cnpResource  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	ccnpResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

// podLookupWait bounds how long an ADD waits for a pod the informer has
// not seen yet: kubelet creates the sandbox of a pod the API server
// already has, so only a lagging watch makes it wait.
const podLookupWait = 5 * time.Second

// kubeSource follows a Kubernetes API server with shared informers: pods
// (this node's become endpoints through the local API, every pod's labels
// and addresses become identities and ipcache entries), namespaces (their
// labels are part of their pods' identities), NetworkPolicies,
// CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies (the policy
// in force), Services and EndpointSlices (the socket load balancer).
//
// Every change goes through the agent's one path: policies and services
// become the manifestSet applySet makes the set in force, pods the
// identity and ipcache changes Add and Del make. The informers relist
// after a watch error, and a relist delivers what changed meanwhile, so
// the agent converges on the API server's state.
type kubeSource struct {
	a      *Agent
	log    *slog.Logger
	client kubernetes.Interface
	dyn    dynamic.Interface

	factory    informers.SharedInformerFactory
	dynFactory dynamicinformer.DynamicSharedInformerFactory
	pods       corelisters.PodLister
	namespaces corelisters.NamespaceLister
	synced     []cache.InformerSynced

	// Guarded by a.mu.
	policies map[objectKey]policy.Policy // the valid version of each policy object
	services map[lb.Frontend]service
	// decoded caches each Service and EndpointSlice decoded at a
	// resource version, so that an event decodes the object that changed
	// and not every one (see servicesChanged).
	decoded  map[types.UID]decodedObject
	remote   map[objectKey]remotePod
	reported map[objectKey]string // the last event posted per object

	// reports are the events and status updates for the API server.
	reports *reporter
}

// objectKey names an object: its kind, namespace and name.
type objectKey struct{ kind, namespace, name string }

func (k objectKey) String() string {
	if k.namespace == "" {
		return k.kind + " " + k.name
	}
	return k.kind + " " + k.namespace + "/" + k.name
}

// remotePod is what a pod of another node holds: the identity reference
// taken for its labels and the ipcache entries of its addresses.
type remotePod struct {
	id    identity.ID
	addrs []netip.Prefix
}

// newKubeSource makes the clients; start starts the informers.
func newKubeSource(a *Agent, cfg *rest.Config) (*kubeSource, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "nodeplane-node/" + a.cfg.Node
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	log := a.log.With("source", "kubernetes")
	return &kubeSource{
		a: a, log: log, client: client, dyn: dyn,
		policies: map[objectKey]policy.Policy{}, services: map[lb.Frontend]service{},
		decoded: map[types.UID]decodedObject{},
		remote:  map[objectKey]remotePod{}, reported: map[objectKey]string{},
		reports: newReporter(log),
	}, nil
}

// nodePodCIDRs returns the pod CIDRs of this node's Node object
// (spec.podCIDRs, else spec.podCIDR): the address pools its pods get.
func (k *kubeSource) nodePodCIDRs(ctx context.Context) ([]netip.Prefix, error) {
	node, err := k.client.CoreV1().Nodes().Get(ctx, k.a.cfg.Node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", k.a.cfg.Node, err)
	}
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for i, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("node %s: spec.podCIDRs[%d]: %w", k.a.cfg.Node, i, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// start registers the informers and waits until their caches have synced
// and the policies and services they hold are in force.
func (k *kubeSource) start(ctx context.Context) error {
	k.factory = informers.NewSharedInformerFactory(k.client, 0)
	k.dynFactory = dynamicinformer.NewDynamicSharedInformerFactory(k.dyn, 0)

	nsInf := k.factory.Core().V1().Namespaces()
	podInf := k.factory.Core().V1().Pods()
	npInf := k.factory.Networking().V1().NetworkPolicies()
	svcInf := k.factory.Core().V1().Services()
	sliceInf := k.factory.Discovery().V1().EndpointSlices()
	cnpInf := k.dynFactory.ForResource(cnpResource)
	ccnpInf := k.dynFactory.ForResource(ccnpResource)
	k.pods, k.namespaces = podInf.Lister(), nsInf.Lister()

	type reg struct {
		name string
		inf  cache.SharedIndexInformer
		h    cache.ResourceEventHandler
	}
	regs := []reg{
		{"namespaces", nsInf.Informer(), handler(k.namespaceChanged)},
		{"pods", podInf.Informer(), handler(k.podChanged)},
		{"networkpolicies", npInf.Informer(), handler(k.policyChanged)},
		{"ciliumnetworkpolicies", cnpInf.Informer(), handler(k.policyChanged)},
		{"ciliumclusterwidenetworkpolicies", ccnpInf.Informer(), handler(k.policyChanged)},
		{"services", svcInf.Informer(), handler(func(any, bool) { k.servicesChanged() })},
		{"endpointslices", sliceInf.Informer(), handler(func(any, bool) { k.servicesChanged() })},
	}
	for _, r := range regs {
		name := r.name
		if err := r.inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			// The reflector relists and resumes by itself; a relist
			// delivers every change that was missed.
			k.log.Warn("watch failed; relisting", "resource", name, "err", err)
		}); err != nil {
			return err
		}
		reg, err := r.inf.AddEventHandler(r.h)
		if err != nil {
			return err
		}
		k.synced = append(k.synced, reg.HasSynced)
	}
	k.a.goroutine("kubernetes reports", k.reports.run)
	k.factory.Start(k.a.ctx.Done())
	k.dynFactory.Start(k.a.ctx.Done())
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(wctx.Done(), k.synced...) {
		return fmt.Errorf("kubernetes informers did not sync: %w", context.Cause(wctx))
	}
	k.log.Info("kubernetes informers synced", "pods", k.count(podInf.Informer()), "namespaces", k.count(nsInf.Informer()))
	return nil
}

func (k *kubeSource) count(inf cache.SharedIndexInformer) int { return len(inf.GetStore().ListKeys()) }

// stop stops the informers (the agent's context ends them).
func (k *kubeSource) stop() {
	if k.factory != nil {
		k.factory.Shutdown()
	}
	if k.dynFactory != nil {
		k.dynFactory.Shutdown()
	}
}

// handler turns add, update and delete into one callback; a delete
// delivers the last state known, tombstones unwrapped.
func handler(fn func(obj any, deleted bool)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { fn(obj, false) },
		UpdateFunc: func(_, obj any) { fn(obj, false) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			fn(obj, true)
		},
	}
}

// fillPod completes an ADD's record with what the API server says of the
// pod: its labels, its namespace's labels, its service account and UID.
// A pod the informer does not have yet is waited for a few seconds, then
// the ADD fails with "try again later". So is a pod whose UID is not the
// one kubelet named (K8S_POD_UID): the informer still holds a deleted pod
// of the same name, whose labels are not the new pod's.
func (k *kubeSource) fillPod(ctx context.Context, rec *record) error {
	ns := rec.Namespace
	if ns == "" {
		ns = "default"
	}
	deadline := time.Now().Add(podLookupWait)
	for {
		pod, err := k.pods.Pods(ns).Get(rec.Pod)
		if err == nil && rec.PodUID != "" && string(pod.UID) != rec.PodUID {
			err = apierrors.NewNotFound(corev1.Resource("pods"), rec.Pod)
		}
		if err == nil {
			if len(rec.Labels) > 0 && !maps.Equal(rec.Labels, pod.Labels) {
				k.log.Info("pod labels from the API server replace those of the CNI request", "pod", ns+"/"+rec.Pod)
			}
			rec.Namespace = ns
			k.describe(pod, rec)
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return &agentapi.Error{Code: agentapi.CodeTryAgainLater, Msg: "look up pod", Details: err.Error()}
		}
		if time.Now().After(deadline) {
			if rec.PodUID != "" {
				return agentapi.Errorf(agentapi.CodeTryAgainLater, "pod %s/%s with UID %s is not in the API server (or this agent has not seen it yet)", ns, rec.Pod, rec.PodUID)
			}
			return agentapi.Errorf(agentapi.CodeTryAgainLater, "pod %s/%s is not in the API server (or this agent has not seen it yet)", ns, rec.Pod)
		}
		select {
		case <-ctx.Done():
			return &agentapi.Error{Code: agentapi.CodeTryAgainLater, Msg: "look up pod", Details: ctx.Err().Error()}
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// describe sets the identity inputs of rec from pod and its namespace.
func (k *kubeSource) describe(pod *corev1.Pod, rec *record) {
	rec.Labels = maps.Clone(pod.Labels)
	rec.ServiceAccount = pod.Spec.ServiceAccountName
	rec.PodUID = string(pod.UID)
	rec.NamespaceLabels = nil
	if ns, err := k.namespaces.Get(pod.Namespace); err == nil {
		rec.NamespaceLabels = maps.Clone(ns.Labels)
	}
}

// podChanged follows one pod: this node's pods relabel or remove their
// endpoints, other nodes' pods update their ipcache entries.
func (k *kubeSource) podChanged(obj any, deleted bool) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	k.podChangedLocked(pod, deleted)
}

func (k *kubeSource) podChangedLocked(pod *corev1.Pod, deleted bool) {
	a := k.a
	ctx := a.ctx
	if pod.Spec.NodeName == a.cfg.Node {
		for _, e := range k.endpointsOf(pod) {
			if deleted {
				// kubelet's DEL normally comes first; a pod deleted from
				// the API server has no use for its endpoint either way.
				err := a.releaseLocked(ctx, e)
				delete(a.eps, e.rec.key())
				err = errors.Join(err, a.saveLocked())
				k.log.Info("pod deleted: endpoint removed", "pod", pod.Namespace+"/"+pod.Name, "endpoint", e.rec.EndpointID, "err", err)
				continue
			}
			k.syncLocalLocked(ctx, e)
		}
		k.setRemoteLocked(objectKey{"Pod", pod.Namespace, pod.Name}, nil, nil)
		return
	}
	key := objectKey{"Pod", pod.Namespace, pod.Name}
	// A finished pod (a completed Job's, often kept) still lists its
	// addresses, which another pod may hold by now: it holds nothing,
	// as in Cilium.
	finished := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
	if deleted || pod.Spec.HostNetwork || finished {
		k.setRemoteLocked(key, nil, nil)
		return
	}
	var addrs []netip.Prefix
	for _, ip := range pod.Status.PodIPs {
		if addr, err := netip.ParseAddr(ip.IP); err == nil {
			addrs = append(addrs, netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen()))
		}
	}
	if len(addrs) == 0 {
		k.setRemoteLocked(key, nil, nil)
		return
	}
	var rec record
	rec.Namespace = pod.Namespace
	k.describe(pod, &rec)
	lbls, err := rec.labels()
	if err != nil {
		k.log.Warn("pod labels cannot become an identity", "pod", key.namespace+"/"+key.name, "err", err)
		k.setRemoteLocked(key, nil, nil)
		return
	}
	k.setRemoteLocked(key, &lbls, addrs)
}

// endpointsOf returns this agent's endpoints for pod.
func (k *kubeSource) endpointsOf(pod *corev1.Pod) []*endpoint {
	var out []*endpoint
	for _, e := range k.k8sEndpoints() {
		if e.rec.Namespace == pod.Namespace && e.rec.Pod == pod.Name && (e.rec.PodUID == "" || e.rec.PodUID == string(pod.UID)) {
			out = append(out, e)
		}
	}
	return out
}

// k8sEndpoints returns the endpoints that name a pod, in endpoint ID order.
func (k *kubeSource) k8sEndpoints() []*endpoint {
	var out []*endpoint
	for _, e := range k.a.eps {
		if e.rec.Pod != "" {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(x, y *endpoint) int { return int(x.rec.EndpointID) - int(y.rec.EndpointID) })
	return out
}

// syncLocalLocked gives endpoint e the identity of its pod's current
// labels (and its namespace's), if they changed.
func (k *kubeSource) syncLocalLocked(ctx context.Context, e *endpoint) {
	pod, err := k.pods.Pods(e.rec.Namespace).Get(e.rec.Pod)
	if err != nil || (e.rec.PodUID != "" && string(pod.UID) != e.rec.PodUID) {
		return
	}
	next := e.rec
	k.describe(pod, &next)
	if maps.Equal(next.Labels, e.rec.Labels) && maps.Equal(next.NamespaceLabels, e.rec.NamespaceLabels) && next.ServiceAccount == e.rec.ServiceAccount {
		return
	}
	if err := k.a.relabelLocked(ctx, e, next); err != nil {
		k.log.Error("pod labels changed but the endpoint keeps its identity", "pod", e.rec.Namespace+"/"+e.rec.Pod, "endpoint", e.rec.EndpointID, "err", err)
	}
}

// setRemoteLocked makes the ipcache hold addrs with the identity of lbls
// for a pod of another node (lbls nil: the pod holds nothing). The new
// entries are written before the old ones and the old identity reference
// go, so an address never goes without an identity while it changes.
func (k *kubeSource) setRemoteLocked(key objectKey, lbls *identity.Labels, addrs []netip.Prefix) {
	a, ctx := k.a, k.a.ctx
	old, had := k.remote[key]
	var next remotePod
	if lbls != nil {
		id, _, err := a.alloc.Allocate(ctx, *lbls)
		if err != nil {
			k.log.Error("identity of a pod of another node", "pod", key.namespace+"/"+key.name, "err", err)
			return
		}
		next = remotePod{id: id, addrs: addrs}
		if had && old.id == id && slices.Equal(old.addrs, addrs) {
			_, _ = a.alloc.Release(ctx, id) // the reference old holds is enough
			return
		}
		for _, p := range addrs {
			if err := a.ipc.Upsert(p, ipcache.Entry{Identity: id}); err != nil {
				k.log.Error("ipcache entry of a pod of another node", "pod", key.namespace+"/"+key.name, "addr", p, "err", err)
			}
		}
		k.remote[key] = next
	} else {
		if !had {
			return
		}
		delete(k.remote, key)
	}
	if had {
		for _, p := range old.addrs {
			if slices.Contains(next.addrs, p) {
				continue
			}
			if e, ok := a.ipc.Get(p); ok && e.Identity == old.id {
				if err := a.ipc.Delete(p); err != nil {
					k.log.Error("delete ipcache entry", "addr", p, "err", err)
				}
			}
		}
		if _, err := a.alloc.Release(ctx, old.id); err != nil && !errors.Is(err, identity.ErrNotAllocated) {
			k.log.Error("release identity", "identity", old.id, "err", err)
		}
	}
}

// namespaceChanged follows a namespace's labels into the identities of
// its pods.
func (k *kubeSource) namespaceChanged(obj any, deleted bool) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok || deleted {
		return
	}
	pods, err := k.pods.Pods(ns.Name).List(labels.Everything())
	if err != nil {
		return
	}
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, pod := range pods {
		k.podChangedLocked(pod, false)
	}
}

// relabelLocked moves endpoint e to the identity of next's labels: the
// engine recompiles its map from the old policy straight to the new one,
// the ipcache maps its addresses to the new identity (which peers' maps
// learn through the identity watch), and the old reference is released.
func (a *Agent) relabelLocked(ctx context.Context, e *endpoint, next record) error {
	lbls, err := next.labels()
	if err != nil {
		return err
	}
	id, _, err := a.alloc.Allocate(ctx, lbls)
	if err != nil {
		return err
	}
	oldID := identity.ID(e.rec.Identity)
	if id == oldID {
		_, _ = a.alloc.Release(ctx, id)
		e.rec = next
		return a.saveLocked()
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.engine.WaitForIdentities(wctx, id); err != nil {
		_, _ = a.alloc.Release(ctx, id)
		return err
	}
	if err := a.engine.RemoveEndpoint(e.ep); err != nil && !errors.Is(err, policy.ErrUnknownEndpoint) {
		_, _ = a.alloc.Release(ctx, id)
		return err
	}
	var errs []error
	if err := e.ep.SetIdentity(id); err != nil {
		errs = append(errs, err)
	}
	// The map holds the old identity's policy: the first write removes
	// what the new one lacks.
	e.ep.reconcile = true
	if err := a.engine.AddEndpoint(e.ep); err != nil {
		errs = append(errs, err)
	}
	for _, p := range e.rec.Addrs {
		if err := a.ipc.Upsert(p, ipcache.Entry{Identity: id}); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := a.alloc.Release(ctx, oldID); err != nil && !errors.Is(err, identity.ErrNotAllocated) {
		errs = append(errs, err)
	}
	next.Identity = uint32(id)
	e.rec = next
	errs = append(errs, a.saveLocked())
	a.log.Info("endpoint relabelled", "pod", e.rec.Namespace+"/"+e.rec.Pod, "endpoint", e.rec.EndpointID, "identity", uint32(id), "old", uint32(oldID))
	return errors.Join(errs...)
}

// afterRestore brings the endpoints an earlier agent left up to date with
// the API server: pods deleted while no agent ran lose their endpoints,
// pods relabelled meanwhile get their new identities.
func (k *kubeSource) afterRestore(ctx context.Context) {
	a := k.a
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range k.k8sEndpoints() {
		pod, err := k.pods.Pods(e.rec.Namespace).Get(e.rec.Pod)
		if err == nil && (e.rec.PodUID == "" || string(pod.UID) == e.rec.PodUID) {
			k.syncLocalLocked(ctx, e)
			continue
		}
		if !apierrors.IsNotFound(err) && err != nil {
			continue
		}
		err = a.releaseLocked(ctx, e)
		delete(a.eps, e.rec.key())
		err = errors.Join(err, a.saveLocked())
		k.log.Info("pod deleted while no agent ran: endpoint removed", "pod", e.rec.Namespace+"/"+e.rec.Pod, "endpoint", e.rec.EndpointID, "err", err)
	}
}

// eventf queues an event on an object for the API server.
func (k *kubeSource) eventf(key objectKey, uid, apiVersion, eventType, reason, format string, args ...any) {
	ns := key.namespace
	if ns == "" {
		ns = metav1.NamespaceDefault // cluster-scoped objects' events live there
	}
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: key.name + ".", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: key.kind, Namespace: key.namespace, Name: key.name,
			UID: types.UID(uid), APIVersion: apiVersion},
		Reason: reason, Message: fmt.Sprintf(format, args...), Type: eventType,
		Source:         corev1.EventSource{Component: "nodeplane-node", Host: k.a.cfg.Node},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		ReportingController: "nodeplane.io/node", ReportingInstance: k.a.cfg.Node,
	}
	k.reports.event(report{what: "event " + reason + " on " + key.String(), do: func(ctx context.Context) error {
		_, err := k.client.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{})
		return err
	}})
}

// setPolicyStatus queues this node's entry in a Cilium policy's
// status.nodes, as Cilium's agents write it: ok and enforcing when the
// policy is in force, the error when it is not.
func (k *kubeSource) setPolicyStatus(key objectKey, errMsg string) {
	gvr := cnpResource
	if key.kind == "CiliumClusterwideNetworkPolicy" {
		gvr = ccnpResource
	} else if key.kind != "CiliumNetworkPolicy" {
		return
	}
	st := map[string]any{"ok": errMsg == "", "enforcing": errMsg == "", "lastUpdated": time.Now().UTC().Format(time.RFC3339Nano)}
	if errMsg != "" {
		st["error"] = errMsg
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{"nodes": map[string]any{k.a.cfg.Node: st}}})
	if err != nil {
		return
	}
	k.reports.status(key, report{what: "status of " + key.String(), do: func(ctx context.Context) error {
		var res dynamic.ResourceInterface = k.dyn.Resource(gvr)
		if key.namespace != "" {
			res = k.dyn.Resource(gvr).Namespace(key.namespace)
		}
		_, err := res.Patch(ctx, key.name, types.MergePatchType, body, metav1.PatchOptions{}, "status")
		return err
	}})
}
