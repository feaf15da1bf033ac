package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// Endpoint is a workload on the node: one or two addresses behind a veth
// pair, with its own copy of the datapath programs and its own policy map.
// Its methods are safe for concurrent use.
type Endpoint struct {
	dp  *Datapath
	cfg EndpointConfig

	attach          AttachMode // AttachTCX or AttachTC; AttachAuto when detached
	progs           *endpointPrograms
	policy          *PolicyMap
	policyInstalled bool
	host            hostLink // zero for a detached endpoint
	attachments     []attachment
	entries         []endpointKey // written to the endpoints map

	mu       sync.RWMutex
	rec      endpointRecord // as in the records map, once recorded
	recorded bool
	identity identity.ID
	deleted  bool // deleted or released: the handle is unusable
	released bool // released by a pinning Datapath's Close: still installed
}

// hostLink is the host side of an endpoint's veth pair.
type hostLink struct {
	index int
	name  string
	mac   net.HardwareAddr
}

// ID returns the endpoint's ID.
func (ep *Endpoint) ID() EndpointID { return ep.cfg.ID }

// Identity returns the endpoint's current security identity.
func (ep *Endpoint) Identity() identity.ID {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	if ep.identity == identity.Unknown {
		return ep.cfg.Identity
	}
	return ep.identity
}

// IPv4 returns the endpoint's IPv4 address, if it has one.
func (ep *Endpoint) IPv4() netip.Addr { return ep.cfg.IPv4 }

// IPv6 returns the endpoint's IPv6 address, if it has one.
func (ep *Endpoint) IPv6() netip.Addr { return ep.cfg.IPv6 }

// MAC returns the MAC address of the endpoint's interface.
func (ep *Endpoint) MAC() net.HardwareAddr { return append(net.HardwareAddr(nil), ep.cfg.MAC...) }

// HostIfindex returns the ifindex of the host-side interface in the node
// namespace, 0 for a detached endpoint.
func (ep *Endpoint) HostIfindex() int { return ep.host.index }

// HostIfName returns the name of the host-side interface, "" for a
// detached endpoint.
func (ep *Endpoint) HostIfName() string { return ep.host.name }

// NetNS returns the path of the endpoint's network namespace as
// configured ([EndpointConfig].NetNS), "" for a detached endpoint.
func (ep *Endpoint) NetNS() string { return ep.cfg.NetNS }

// IfName returns the name of the endpoint's interface inside its
// namespace.
func (ep *Endpoint) IfName() string { return ep.cfg.IfName }

// NodeNetNS returns the path of the node namespace the host-side
// interface lives in ([Config].NodeNetNS); "" is the process's.
func (ep *Endpoint) NodeNetNS() string { return ep.dp.cfg.NodeNetNS }

// HostMAC returns the MAC of the host-side interface: the endpoint's
// gateway. Nil for a detached endpoint.
func (ep *Endpoint) HostMAC() net.HardwareAddr { return append(net.HardwareAddr(nil), ep.host.mac...) }

// AttachMode returns how the endpoint's programs are attached: AttachTCX
// or AttachTC, or AttachAuto for a detached endpoint. An adopted endpoint
// keeps the mode it was added with.
func (ep *Endpoint) AttachMode() AttachMode { return ep.attach }

// Policy returns the endpoint's policy map.
func (ep *Endpoint) Policy() *PolicyMap { return ep.policy }

// ApplyPolicy changes the endpoint's policy map by a delta; see
// [PolicyMap.Apply]. With it and [Endpoint.Identity] an Endpoint is what
// the policy engine (policy.Engine.AddEndpoint) manages.
func (ep *Endpoint) ApplyPolicy(upserts mapstate.State, deletes []mapstate.Key) error {
	return ep.policy.Apply(upserts, deletes)
}

// String returns "endpoint N", N being the endpoint's ID.
func (ep *Endpoint) String() string { return fmt.Sprintf("endpoint %d", ep.cfg.ID) }

func (ep *Endpoint) addrs() []netip.Addr {
	var a []netip.Addr
	for _, addr := range []netip.Addr{ep.cfg.IPv4, ep.cfg.IPv6} {
		if addr.IsValid() {
			a = append(a, addr)
		}
	}
	return a
}

func (ep *Endpoint) info(id identity.ID) endpointInfo {
	info := endpointInfo{
		Ifindex:    uint32(ep.host.index),
		Identity:   uint32(id),
		EndpointID: uint16(ep.cfg.ID),
		MAC:        [6]byte(ep.cfg.MAC),
	}
	if ep.host.mac != nil {
		info.NodeMAC = [6]byte(ep.host.mac)
	}
	return info
}

// writeEndpointEntries adds the endpoint's addresses to the endpoints map.
// An address already there belongs to another endpoint, possibly of
// another Datapath on the same pins.
func (ep *Endpoint) writeEndpointEntries() error {
	info := ep.info(ep.cfg.Identity)
	for _, a := range ep.addrs() {
		k := endpointKeyFor(a)
		if err := ep.dp.maps.endpoints.Update(k, info, ebpf.UpdateNoExist); err != nil {
			if errors.Is(err, ebpf.ErrKeyExist) {
				return fmt.Errorf("endpoint %d: address %v: %w", ep.cfg.ID, a, ErrEndpointExists)
			}
			return fmt.Errorf("endpoint %d: add address %v: %w", ep.cfg.ID, a, err)
		}
		ep.entries = append(ep.entries, k)
	}
	return nil
}

// updateRecord changes the endpoint's record in the records map. ep.mu is
// held, or the endpoint is not shared yet.
func (ep *Endpoint) updateRecord(change func(*endpointRecord)) error {
	rec := ep.rec
	change(&rec)
	if err := ep.dp.maps.records.Update(uint32(ep.cfg.ID), rec, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("endpoint %d: update record: %w", ep.cfg.ID, err)
	}
	ep.rec = rec
	return nil
}

// SetIdentity changes the endpoint's security identity. New connections
// from and to the endpoint are decided with it at once; established ones
// keep flowing.
func (ep *Endpoint) SetIdentity(id identity.ID) error {
	if id == identity.Unknown {
		return fmt.Errorf("%w: endpoint %d: identity 0 means any peer and cannot name an endpoint", ErrInvalidConfig, ep.cfg.ID)
	}
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.deleted {
		return fmt.Errorf("endpoint %d: %w", ep.cfg.ID, nodeplane.ErrClosed)
	}
	// The record first: a Datapath that finds the two disagreeing after a
	// crash rewrites the endpoints map from the record.
	prev := ep.rec.Identity
	if err := ep.updateRecord(func(r *endpointRecord) { r.Identity = uint32(id) }); err != nil {
		return fmt.Errorf("set identity %d: %w", id, err)
	}
	info := ep.info(id)
	for i, k := range ep.entries {
		if err := ep.dp.maps.endpoints.Update(k, info, ebpf.UpdateExist); err != nil {
			// Put the old identity back where it changed.
			old := ep.info(identity.ID(prev))
			for _, k := range ep.entries[:i] {
				_ = ep.dp.maps.endpoints.Update(k, old, ebpf.UpdateExist)
			}
			_ = ep.updateRecord(func(r *endpointRecord) { r.Identity = prev })
			return fmt.Errorf("endpoint %d: set identity %d: %w", ep.cfg.ID, id, err)
		}
	}
	ep.identity = id
	return nil
}

// Delete removes the endpoint: its addresses from the endpoints map (from
// then on new connections from and to it are dropped), its interfaces
// (which detaches the programs), its pins, its policy map, its programs,
// and the conntrack entries of its addresses, so that a later endpoint
// with the same address inherits none of its connections. Delete is
// idempotent. With pinning, Delete on the handle of a closed Datapath
// returns an error wrapping [nodeplane.ErrClosed] and leaves the endpoint installed:
// it belongs to the next Datapath on the pins.
func (ep *Endpoint) Delete() error {
	ep.dp.forget(ep)
	return ep.delete(true)
}

// delete tears the endpoint down; flushCT also deletes the conntrack
// entries of its addresses.
func (ep *Endpoint) delete(flushCT bool) error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.released {
		return fmt.Errorf("endpoint %d: %w", ep.cfg.ID, nodeplane.ErrClosed)
	}
	if ep.deleted {
		return nil
	}
	ep.deleted = true

	var errs []error
	// Should the process die half way, the next Datapath finds the record
	// in this state and finishes the job.
	if ep.recorded {
		errs = append(errs, ep.updateRecord(func(r *endpointRecord) { r.State = recordDeleting }))
	}
	for _, k := range ep.entries {
		if err := ep.dp.maps.endpoints.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("endpoint %d: remove address: %w", ep.cfg.ID, err))
		}
	}
	ep.entries = nil
	// Removing the interface first means no packet ever crosses it
	// without the programs.
	if ep.host.index != 0 {
		errs = append(errs, ep.dp.node.unplumb(ep.cfg, ep.host))
	}
	for _, a := range ep.attachments {
		errs = append(errs, a.detach())
	}
	ep.attachments = nil
	if dir := ep.dp.endpointPinDir(ep.cfg.ID); dir != "" {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %d: remove pins: %w", ep.cfg.ID, err))
		}
	}
	if ep.recorded {
		// The record claimed the ID, so the EDT entry is this endpoint's.
		errs = append(errs, ep.clearEgressRate())
	}
	if ep.policyInstalled {
		if err := ep.dp.maps.policy.Delete(uint32(ep.cfg.ID)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("endpoint %d: remove policy map: %w", ep.cfg.ID, err))
		}
	}
	if ep.policy != nil {
		errs = append(errs, ep.policy.close())
	}
	if ep.progs != nil {
		errs = append(errs, ep.progs.close())
	}
	if flushCT {
		if _, err := ep.dp.conntrack.deleteAddrs(ep.addrs()); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %d: %w", ep.cfg.ID, err))
		}
	}
	err := errors.Join(errs...)
	// A record that failed to go keeps its deleting state, and the next
	// Datapath on the pins retries.
	if ep.recorded && err == nil {
		if err := ep.dp.maps.records.Delete(uint32(ep.cfg.ID)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("endpoint %d: remove record: %w", ep.cfg.ID, err)
		}
		ep.recorded = false
	}
	return err
}

// release lets go of the endpoint's file descriptors and leaves it
// installed: entries, record, policy map, interface and attachments (a
// pinned tcx link or a tc filter keeps its program). It is how a pinning
// Datapath closes, and how adoption backs out.
func (ep *Endpoint) release() error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.deleted {
		return nil
	}
	ep.deleted, ep.released = true, true
	var errs []error
	for _, a := range ep.attachments {
		errs = append(errs, a.release())
	}
	ep.attachments = nil
	if ep.policy != nil {
		errs = append(errs, ep.policy.close())
	}
	if ep.progs != nil {
		errs = append(errs, ep.progs.close())
	}
	return errors.Join(errs...)
}
