package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/identity"
)

// Endpoint is a workload on the node: one or two addresses behind a veth
// pair, with its own copy of the datapath programs and its own policy map.
// Its methods are safe for concurrent use.
type Endpoint struct {
	dp  *Datapath
	cfg EndpointConfig

	progs           *endpointPrograms
	policy          *PolicyMap
	policyInstalled bool
	host            hostLink // zero for a detached endpoint
	attachments     []attachment
	entries         []endpointKey // written to the endpoints map

	mu       sync.RWMutex
	identity identity.ID
	deleted  bool
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

// HostMAC returns the MAC of the host-side interface: the endpoint's
// gateway. Nil for a detached endpoint.
func (ep *Endpoint) HostMAC() net.HardwareAddr { return append(net.HardwareAddr(nil), ep.host.mac...) }

// Policy returns the endpoint's policy map.
func (ep *Endpoint) Policy() *PolicyMap { return ep.policy }

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
		return fmt.Errorf("endpoint %d: %w", ep.cfg.ID, ErrClosed)
	}
	info := ep.info(id)
	for _, k := range ep.entries {
		if err := ep.dp.maps.endpoints.Update(k, info, ebpf.UpdateExist); err != nil {
			return fmt.Errorf("endpoint %d: set identity %d: %w", ep.cfg.ID, id, err)
		}
	}
	ep.identity = id
	return nil
}

// Delete removes the endpoint: its addresses from the endpoints map (from
// then on new connections from and to it are dropped), its interfaces
// (which detaches the programs), its policy map, its programs, and the
// conntrack entries of its addresses, so that a later endpoint with the
// same address inherits none of its connections. Delete is idempotent.
func (ep *Endpoint) Delete() error {
	ep.dp.forget(ep)
	return ep.delete(true)
}

// delete tears the endpoint down; flushCT also deletes the conntrack
// entries of its addresses.
func (ep *Endpoint) delete(flushCT bool) error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.deleted {
		return nil
	}
	ep.deleted = true

	var errs []error
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
	return errors.Join(errs...)
}
